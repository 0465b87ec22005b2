package controllers

import (
	"context"
	"strings"
	"sync"

	"github.com/cosi-project/runtime/pkg/controller"
	"go.uber.org/zap"
)

// executors runs a controller's long side effects (a machine's upgrade, a Kubernetes upgrade step, a cluster's
// manifest check or apply) in goroutines that outlive the reconcile that started them, one per key (what they act
// on), so a reconcile never waits on the fleet. It is the one home of their bookkeeping:
//   - none starts once the runtime stops (runHook) or from a reconcile whose context has ended, and the runtime's
//     stop waits for every one: the next run resumes their work from the resources they wrote;
//   - a key runs one executor at a time;
//   - an executor's last write and its end are one step (execution.finish), so the reconcile that write wakes,
//     which asks whether the key still runs (running), waits for it and then finds the key free.
//
// The zero value is ready to use.
type executors struct {
	mu       sync.Mutex
	runs     map[string]*execution
	live     int // goroutines alive, for tests to see that none outlives its work
	stopping bool
	wg       sync.WaitGroup
}

// execution is one executor started by executors.start.
type execution struct {
	cancel context.CancelFunc
	done   chan struct{} // closed when the goroutine has returned

	mu       sync.Mutex
	finished bool
}

// finish makes the executor's last write and, when it succeeds, marks the executor finished in the same step.
func (x *execution) finish(write func() error) error {
	x.mu.Lock()
	defer x.mu.Unlock()

	err := write()
	if err == nil {
		x.finished = true
	}

	return err
}

// runHook is the controller's RunHook: when the runtime stops, no executor starts any more and the stop waits until
// every one has returned (their contexts are the reconciles', which end with the runtime).
func (e *executors) runHook(ctx context.Context, _ *zap.Logger, _ controller.QRuntime) error {
	<-ctx.Done()

	e.mu.Lock()
	e.stopping = true
	e.mu.Unlock()

	e.wg.Wait()

	return nil
}

// start runs body under key in the background, unless an unfinished executor runs under key, the runtime is
// stopping, or ctx (the reconcile's) has ended: a reconcile still running as the runtime stops would otherwise
// start an executor that makes its first call on the way out. It reports whether body was started.
func (e *executors) start(ctx context.Context, key string, body func(context.Context, *execution)) bool {
	e.mu.Lock()
	defer e.mu.Unlock()

	if e.stopping || ctx.Err() != nil || e.runningLocked(key) {
		return false
	}

	if e.runs == nil {
		e.runs = map[string]*execution{}
	}

	x := &execution{done: make(chan struct{})}
	ctx, x.cancel = context.WithCancel(ctx)
	e.runs[key] = x
	e.live++

	e.wg.Go(func() {
		defer close(x.done)
		defer x.cancel()

		body(ctx, x)

		e.mu.Lock()
		defer e.mu.Unlock()

		if e.runs[key] == x {
			delete(e.runs, key)
		}

		e.live--
	})

	return true
}

// running reports whether an executor runs under key and has not finished. It waits for an executor making its
// last write (finish).
func (e *executors) running(key string) bool {
	e.mu.Lock()
	x := e.runs[key]
	e.mu.Unlock()

	return x.unfinished()
}

// runningLocked is running with e.mu held.
func (e *executors) runningLocked(key string) bool {
	return e.runs[key].unfinished()
}

// unfinished reports whether x (nil for none) has not finished, after its last write if it makes it now.
func (x *execution) unfinished() bool {
	if x == nil {
		return false
	}

	x.mu.Lock()
	defer x.mu.Unlock()

	return !x.finished
}

// stop ends the executor under key, if one runs, and waits until its goroutine has returned. It reports whether
// one ran and had not finished (it was stopped in the middle of its work).
func (e *executors) stop(key string) bool {
	e.mu.Lock()
	x := e.runs[key]
	e.mu.Unlock()

	if x == nil {
		return false
	}

	x.cancel()
	<-x.done

	return x.unfinished()
}

// stopPrefix ends, without waiting, every executor whose key starts with prefix (the work of a deleted cluster).
func (e *executors) stopPrefix(prefix string) {
	e.mu.Lock()
	defer e.mu.Unlock()

	for key, x := range e.runs {
		if strings.HasPrefix(key, prefix) {
			x.cancel()
		}
	}
}

// count is the number of executor goroutines alive.
func (e *executors) count() int {
	e.mu.Lock()
	defer e.mu.Unlock()

	return e.live
}
