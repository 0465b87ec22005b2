package rollout

import (
	"slices"
	"time"
)

// unknownUnlock stands for the unlock time of a machine whose lock went without leaving one (the Machine lacks
// cluster.UnlockedAtAnnotation): such a machine goes before those with a known time, in ID order, so it is never
// left behind.
var unknownUnlock = time.Unix(0, 0).UTC()

// UnlockOrder is the UnlockedAt Schedule gives each machine of view that waited on a lock in this rollout and is
// unlocked now: "waited" is read from the rollout's last decision, which listed it as waiting on a lock
// (prevWaiting) or as unlocked and not yet started (prevUnlocked). Both are in the rollout's durable status, and
// the unlock time is on the Machine (MachineView.UnlockedAt), so the order survives a restart of the engine. A
// machine unlocked before any decision saw it wait gets nothing: it simply takes its place in the usual order,
// and an unlock long past never puts a machine first in a later rollout.
func UnlockOrder(view ClusterView, prevWaiting, prevUnlocked []string) map[string]time.Time {
	out := map[string]time.Time{}

	for _, m := range view.Machines {
		if m.Locked || !slices.Contains(prevWaiting, m.ID) && !slices.Contains(prevUnlocked, m.ID) {
			continue
		}

		at := m.UnlockedAt
		if at.IsZero() {
			at = unknownUnlock
		}

		out[m.ID] = at
	}

	return out
}
