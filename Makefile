# upshift: `make run` (the demo), `make test` (every test), `make bench` (benchmarks, see docs/benchmarks.md).
GO      ?= go
OUT     := $(CURDIR)/_out
BIN     := $(OUT)/bin

# Tests find the real Kubernetes binaries here; a missing binary fails the tests that need it.
export UPSHIFT_KUBE_BIN_DIR := $(BIN)

.PHONY: all build kube-bins promtool run test bench fmt vet

all: build

build:
	$(GO) build -o $(BIN)/upshift ./cmd/upshift

# The real kube-apiserver, kube-controller-manager and kube-scheduler, built from k8s.io/kubernetes in their own
# module (integration/kubebins) so its replace lines never leak into ours. Cold: ~10 min on 2 cores; warm: a no-op.
kube-bins:
	$(MAKE) -C integration/kubebins BIN=$(BIN)

# The demo: an engine and an emulated fleet (real etcd, real kube-apiserver) in one process, upgrading Talos live.
# Flags go through DEMO_FLAGS, e.g. `make run DEMO_FLAGS="--fault c1-w-1=rollback"` (see `upshift demo --help`).
run: build kube-bins
	$(BIN)/upshift demo $(DEMO_FLAGS)

# promtool (Debian package prometheus) checks the alert rules in examples/prometheus-rules.yaml (rules_test.go).
promtool:
	@command -v promtool >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; }
	@promtool --version | head -1

test: build kube-bins promtool vet
	$(GO) test -race -timeout 35m ./...

bench: build kube-bins
	$(GO) test -run '^$$' -bench . -benchtime 1x -timeout 60m ./...

fmt:
	gofmt -l -w .

vet:
	$(GO) vet ./...
