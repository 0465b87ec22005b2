package validate_test

import (
	"testing"
	"time"

	"github.com/cosi-project/runtime/pkg/state"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/upshift-io/upshift/resources/cluster"
)

// Removing a lock stamps its Machine with the time of the unlock, which orders the unlocked machines' turns; a
// later unlock stamps a later time; removing a lock that does not exist stamps nothing and says not found.
func TestUnlockStampsTheMachine(t *testing.T) {
	t.Parallel()

	st := newState(t)
	ctx := t.Context()

	unlockedAt := func() (time.Time, bool) {
		m, err := st.Get(ctx, cluster.NewMachine("w-1").Metadata())
		require.NoError(t, err)

		v, ok := m.Metadata().Annotations().Get(cluster.UnlockedAtAnnotation)
		if !ok {
			return time.Time{}, false
		}

		at, err := time.Parse(time.RFC3339Nano, v)
		require.NoError(t, err)

		return at, true
	}

	require.NoError(t, st.Create(ctx, lock("w-1")))
	_, stamped := unlockedAt()
	assert.False(t, stamped, "locking stamps nothing")

	before := time.Now()
	require.NoError(t, st.Destroy(ctx, cluster.NewMachineLock("w-1").Metadata()))

	first, stamped := unlockedAt()
	require.True(t, stamped, "the unlock is stamped on the machine")
	assert.False(t, first.Before(before.Truncate(time.Nanosecond).UTC()), "stamped at the unlock")

	err := st.Destroy(ctx, cluster.NewMachineLock("w-1").Metadata())
	assert.True(t, state.IsNotFoundError(err), "no lock: not found, as before: %v", err)

	again, _ := unlockedAt()
	assert.Equal(t, first, again, "a failed unlock stamps nothing")

	require.NoError(t, st.Create(ctx, lock("w-1")))
	require.NoError(t, st.Destroy(ctx, cluster.NewMachineLock("w-1").Metadata()))

	second, _ := unlockedAt()
	assert.True(t, second.After(first), "a later unlock, a later stamp")
}
