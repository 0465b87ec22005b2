package talosemu

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// Fault is a failure injected into one emulated node, so tests can prove how the engine reacts to it.
type Fault string

// The faults a node can be given, at start (WithFault, `--fault NODE=KIND`) or at run time (Fleet.SetFault).
const (
	// FaultInstallFail makes installs fail with a non-zero exit code (LifecycleService.Upgrade) or abort the legacy
	// upgrade sequence before its reboot.
	FaultInstallFail Fault = "install-fail"
	// FaultRollback makes the node come back from the reboot that follows an install on its old version (A/B
	// rollback).
	FaultRollback Fault = "rollback"
	// FaultNoReturn makes the node never come back from its next reboot, until the fault is cleared.
	FaultNoReturn Fault = "no-return"
	// FaultSlowReboot multiplies the node's reboot downtime by the fleet's slow-reboot factor.
	FaultSlowReboot Fault = "slow-reboot"
	// FaultEtcdUnhealthy makes the node's etcd member report itself unhealthy (EtcdStatus errors, etcd service and
	// machine status not healthy).
	FaultEtcdUnhealthy Fault = "etcd-unhealthy"
	// FaultAPIDown makes the node's API unreachable while the fault is set: calls fail as unavailable.
	FaultAPIDown Fault = "api-down"
	// FaultPullFail makes image pulls on the node fail as if the image did not exist: every pull, or only the pulls
	// of one image when the fault names it (NodeFault.Image, `NODE=pull-fail:IMAGE`), so a test can make one
	// node's kubelet image unavailable while everything else pulls.
	FaultPullFail Fault = "pull-fail"
)

// Faults lists every fault kind, in the order the CLI documents them.
func Faults() []Fault {
	return []Fault{FaultInstallFail, FaultRollback, FaultNoReturn, FaultSlowReboot, FaultEtcdUnhealthy, FaultAPIDown, FaultPullFail}
}

// ParseFault checks a fault kind given by a user.
func ParseFault(s string) (Fault, error) {
	f := Fault(strings.TrimSpace(s))
	if !slices.Contains(Faults(), f) {
		names := make([]string, 0, len(Faults()))
		for _, known := range Faults() {
			names = append(names, string(known))
		}

		return "", fmt.Errorf("unknown fault %q (known: %s)", s, strings.Join(names, ", "))
	}

	return f, nil
}

// NodeFault is a fault of one node, as the CLI gives it.
type NodeFault struct {
	Node  string
	Fault Fault
	// Image limits a pull-fail fault to the pulls of this image reference; empty fails every pull.
	Image string
	// For makes the fault clear itself after this long; 0 keeps it until cleared.
	For time.Duration
}

// ParseNodeFault parses the CLI form NODE=KIND[:DURATION], e.g. c1-w-2=api-down:30s, or NODE=pull-fail:IMAGE,
// e.g. c1-w-1=pull-fail:ghcr.io/siderolabs/kubelet:v1.36.2 (an argument that is not a duration names the image).
func ParseNodeFault(s string) (NodeFault, error) {
	node, spec, ok := strings.Cut(s, "=")
	if !ok || node == "" {
		return NodeFault{}, fmt.Errorf("fault %q: expected NODE=KIND[:DURATION] or NODE=pull-fail:IMAGE", s)
	}

	kind, arg, hasArg := strings.Cut(spec, ":")

	fault, err := ParseFault(kind)
	if err != nil {
		return NodeFault{}, fmt.Errorf("fault %q: %w", s, err)
	}

	nf := NodeFault{Node: node, Fault: fault}

	if !hasArg {
		return nf, nil
	}

	if d, err := time.ParseDuration(arg); err == nil && d > 0 {
		nf.For = d

		return nf, nil
	}

	if fault != FaultPullFail || arg == "" {
		return NodeFault{}, fmt.Errorf("fault %q: %q is not a positive Go duration", s, arg)
	}

	nf.Image = arg

	return nf, nil
}

func (nf NodeFault) validate() error {
	if _, err := ParseFault(string(nf.Fault)); err != nil {
		return err
	}

	if nf.For < 0 {
		return fmt.Errorf("fault %s of %s: negative duration %s", nf.Fault, nf.Node, nf.For)
	}

	if nf.Image != "" && nf.Fault != FaultPullFail {
		return fmt.Errorf("fault %s of %s: only %s takes an image", nf.Fault, nf.Node, FaultPullFail)
	}

	return nil
}
