package talos

import (
	"errors"
	"fmt"
	"testing"

	"github.com/siderolabs/go-kubernetes/kubernetes/upgrade"
)

// TestFindingsOfChecksError reads the items of go-kubernetes' checks error as Run returns it (a
// ComponentRemovedItemsError value, possibly wrapped) and as a pointer; read as "the checks could not run", a
// failed check used to be retried until the step timed out, with no result recorded.
func TestFindingsOfChecksError(t *testing.T) {
	var removed upgrade.ComponentRemovedItemsError

	removed.PopulateRemovedFeatureGates("c1-cp-2", "kube-apiserver", []string{"--feature-gates=HonorPVReclaimPolicy=true"}, []string{"HonorPVReclaimPolicy"})
	removed.PopulateRemovedCLIFlags("c1-w-1", "kubelet", []string{"--boot-id-file=/etc/boot-id"}, []string{"boot-id-file"})

	want := []Finding{
		{Check: "removed-feature-gates", Node: "c1-cp-2", Component: "kube-apiserver", Value: "HonorPVReclaimPolicy"},
		{Check: "removed-flags", Node: "c1-w-1", Component: "kubelet", Value: "boot-id-file"},
	}

	for name, err := range map[string]error{
		"value":   removed.ErrorOrNil(),
		"wrapped": fmt.Errorf("checks: %w", removed.ErrorOrNil()),
		"pointer": &removed,
	} {
		got, err := findings(err)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}

		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("%s: findings %v, want %v", name, got, want)
		}
	}

	if got, err := findings(nil); err != nil || got != nil {
		t.Errorf("no error: findings %v, %v; want none", got, err)
	}

	unreachable := errors.New("node unreachable")
	if _, err := findings(unreachable); !errors.Is(err, unreachable) {
		t.Errorf("an error that is not a list of items: got %v, want it returned", err)
	}
}
