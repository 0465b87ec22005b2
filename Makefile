# upshift: `make run` (the demo), `make test` (every test), `make bench` (benchmarks, see docs/benchmarks.md).
GO      ?= go
OUT     := $(CURDIR)/_out
BIN     := $(OUT)/bin

# Tests find the real Kubernetes binaries here; a missing binary fails the tests that need it.
export UPSHIFT_KUBE_BIN_DIR := $(BIN)

.PHONY: all build kube-bins run test bench fmt vet

all: build

build:
	$(GO) build -o $(BIN)/upshift ./cmd/upshift

# The real kube-apiserver, kube-controller-manager and kube-scheduler, built from k8s.io/kubernetes in their own
# module (integration/kubebins) so its replace lines never leak into ours. Cold: ~10 min on 2 cores; warm: a no-op.
kube-bins:
	$(MAKE) -C integration/kubebins BIN=$(BIN)

# For now: serve on a fresh temporary data dir and say how to use it (the demo replaces this).
run: build
	@dir=$$(mktemp -d -t upshift-run-XXXXXX); \
	echo "upshift: state in $$dir/state.db, API on 127.0.0.1:50651. In another terminal:"; \
	echo "  $(BIN)/upshift apply -f examples/cluster.yaml"; \
	echo "  $(BIN)/upshift get clusters"; \
	echo "  $(BIN)/upshift get machines -w"; \
	echo "  $(BIN)/upshift history cluster prod"; \
	echo "Stop with Ctrl-C."; \
	exec $(BIN)/upshift serve --data-dir $$dir

test: build kube-bins vet
	$(GO) test -race -timeout 25m ./...

bench: build
	$(GO) test -run '^$$' -bench . -benchtime 1x ./...

fmt:
	gofmt -l -w .

vet:
	$(GO) vet ./...
