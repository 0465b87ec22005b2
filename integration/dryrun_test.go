package integration

import (
	"regexp"
	"slices"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/upshift-io/upshift/internal/talosemu"
	"github.com/upshift-io/upshift/resources/cluster"
	"github.com/upshift-io/upshift/resources/upgrade"
)

// startLine is one start the dry run prints: "    4. c1-w-1 → v1.13.4".
var startLine = regexp.MustCompile(`(?m)^\s+\d+\. (\S+) → (\S+)$`)

// TestDryRunOrderIsTheEngines: the order of starts `upgrade talos --dry-run` prints is the order in which the
// engine then admits the machines, hop by hop, on a cluster with a worker parallelism of 2 and a locked worker
// (which the dry run says waits, and the engine never starts).
func TestDryRunOrderIsTheEngines(t *testing.T) {
	supported := talosemu.SupportedVersions()
	oldest, newest := supported[0], supported[len(supported)-1]

	bed := startLiteBed(t, 3, 4, oldest)

	st := bed.State()
	setCluster(t, st, "c1", func(s *cluster.ClusterSpec) { s.Parallelism = "2" })
	waitObserved(t, bed, oldest)
	mustCLI(t, bed, "lock", "c1-w-3", "--reason", "dry run test")

	out := mustCLI(t, bed, "upgrade", "talos", "c1", "--to", "v"+newest, "--dry-run")
	t.Log(out)
	assert.Contains(t, out, "waits for locked machine c1-w-3 (dry run test)")

	var predicted []string
	for _, m := range startLine.FindAllStringSubmatch(out, -1) {
		predicted = append(predicted, m[1]+" → "+m[2])
	}

	require.Len(t, predicted, 2*6, "six unlocked machines, two hops each")

	mustCLI(t, bed, "upgrade", "talos", "c1", "--to", "v"+newest)
	waitTalos(t, st, "c1", rolloutTimeout, "only the locked worker left", func(s *upgrade.TalosUpgradeStatusSpec) bool {
		return s.Phase == upgrade.PhaseBlocked && slices.Equal(s.WaitingOnLock, []string{"c1-w-3"})
	})

	// The engine's starts: every machine the cluster's status admitted, in the order it was admitted, toward the
	// hop its way led to then (each admitted group is sorted by ID, as the dry run's starts of one decision are).
	var actual []string

	admitted := map[string]bool{}

	for _, w := range historyOf[talosUpgradeHistory](t, bed, upgrade.TalosUpgradeStatusType, "c1") {
		for _, id := range w.doc.Spec.Admitted {
			if admitted[id+w.doc.Spec.Target] {
				continue
			}

			admitted[id+w.doc.Spec.Target] = true
			actual = append(actual, id+" → "+w.doc.Spec.Target)
		}
	}

	assert.Equal(t, predicted, actual, "the dry run's order of starts is the engine's")
	assert.NotContains(t, actual, "c1-w-3 → v"+newest)
}
