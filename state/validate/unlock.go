package validate

import (
	"context"
	"fmt"
	"time"

	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/state"

	"github.com/upshift-io/upshift/resources"
	"github.com/upshift-io/upshift/resources/cluster"
)

// unlockStampTries bounds the tries of stamping a Machine that others keep updating at the same moment.
const unlockStampTries = 10

// Destroy destroys the resource at ptr; removing a MachineLock first stamps its Machine with the time of the unlock
// (cluster.UnlockedAtAnnotation). The stamp is written first and durably, so a crash between the two writes leaves
// the machine locked with a stamp the next unlock overwrites, never unlocked without one: the rollouts give unlocked
// machines their turn in unlock order (rollout.UnlockOrder), whoever removed the lock (CLI, gRPC, Go API).
func (s *State) Destroy(ctx context.Context, ptr resource.Pointer, opts ...state.DestroyOption) error {
	if ptr.Namespace() == resources.Namespace && ptr.Type() == cluster.MachineLockType {
		if err := s.stampUnlock(ctx, ptr.ID()); err != nil {
			return err
		}
	}

	return s.CoreState.Destroy(ctx, ptr, opts...)
}

// stampUnlock records on Machine id that its lock is being removed now. A lock that does not exist (the destroy
// then reports it) or whose Machine is gone stamps nothing.
func (s *State) stampUnlock(ctx context.Context, id resource.ID) error {
	if _, err := s.CoreState.Get(ctx, cluster.NewMachineLock(id).Metadata()); err != nil {
		if state.IsNotFoundError(err) {
			return nil
		}

		return fmt.Errorf("reading the lock of machine %q: %w", id, err)
	}

	for try := 1; ; try++ {
		r, err := s.CoreState.Get(ctx, cluster.NewMachine(id).Metadata())
		if err != nil {
			if state.IsNotFoundError(err) {
				return nil
			}

			return fmt.Errorf("reading machine %q to record its unlock: %w", id, err)
		}

		m := r.DeepCopy()
		m.Metadata().Annotations().Set(cluster.UnlockedAtAnnotation, time.Now().UTC().Format(time.RFC3339Nano))
		setWriter(ctx, m)

		err = s.CoreState.Update(ctx, m)
		if err == nil {
			return nil
		}

		if !state.IsConflictError(err) || try == unlockStampTries {
			return fmt.Errorf("recording the unlock of machine %q: %w", id, err)
		}
	}
}
