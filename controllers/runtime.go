// Package controllers holds upshift's controllers, one per file, and the supervised COSI controller runtime that
// runs them.
//
// COSI's runtime stops every controller when one of its watches fails (a watcher lapped by the state's event
// history, for instance) and cannot be started twice. Runtime therefore builds a fresh COSI runtime for every
// run, registers the controllers on it again, and restarts it after any error or panic with a backoff, logging
// why: the engine never stops reconciling silently.
package controllers

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/cosi-project/runtime/pkg/controller"
	cosiruntime "github.com/cosi-project/runtime/pkg/controller/runtime"
	"github.com/cosi-project/runtime/pkg/controller/runtime/options"
	"github.com/cosi-project/runtime/pkg/state"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Registrar registers controllers on a fresh controller runtime. It is called on every (re)start, so it must
// build new controller values each time rather than reuse ones a previous run held.
type Registrar func(controller.Engine) error

// Builtin registers the controllers every upshift engine runs.
func Builtin(engine controller.Engine) error {
	return engine.RegisterQController(sweepOrphans(NewClusterSummaryController()))
}

// Runtime is a supervised controller runtime: Run keeps a COSI runtime with every registered controller running
// until its context ends.
type Runtime struct {
	state      state.State
	logger     *zap.Logger
	registrars []Registrar
	options    []options.Option
	minBackoff time.Duration
	maxBackoff time.Duration
}

// RuntimeOption configures a Runtime.
type RuntimeOption func(*Runtime)

// WithRegistrars adds controllers to every run.
func WithRegistrars(registrars ...Registrar) RuntimeOption {
	return func(r *Runtime) {
		r.registrars = append(r.registrars, registrars...)
	}
}

// WithRuntimeOptions passes options (cached resources, rate limits) to every COSI runtime built.
func WithRuntimeOptions(opts ...options.Option) RuntimeOption {
	return func(r *Runtime) {
		r.options = append(r.options, opts...)
	}
}

// WithRestartBackoff sets the delay before the first restart and the cap it doubles up to.
// Defaults: 100 ms and 30 s.
func WithRestartBackoff(minDelay, maxDelay time.Duration) RuntimeOption {
	return func(r *Runtime) {
		r.minBackoff, r.maxBackoff = minDelay, max(minDelay, maxDelay)
	}
}

// NewRuntime returns a Runtime over st.
func NewRuntime(st state.State, logger *zap.Logger, opts ...RuntimeOption) *Runtime {
	r := &Runtime{state: st, logger: logger, minBackoff: 100 * time.Millisecond, maxBackoff: 30 * time.Second}

	for _, opt := range opts {
		opt(r)
	}

	return r
}

// stableRun is how long a run must last for the next restart to start from the minimum backoff again.
const stableRun = time.Minute

// Run runs the controllers until ctx is done, restarting the runtime after every failure. It returns nil once
// ctx is done.
func (r *Runtime) Run(ctx context.Context) error {
	delay := r.minBackoff

	for {
		started := time.Now()
		err := r.runOnce(ctx)

		if ctx.Err() != nil {
			return nil //nolint:nilerr // the engine is stopping; a run cut short by it is no failure
		}

		if time.Since(started) > stableRun {
			delay = r.minBackoff
		}

		r.logger.Error("controller runtime stopped; restarting", zap.Error(err), zap.Duration("after", delay))

		timer := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			timer.Stop()

			return nil
		case <-timer.C:
		}

		delay = min(2*delay, r.maxBackoff)
	}
}

// errStopped reports a runtime that returned without an error before the engine stopped.
var errStopped = errors.New("controller runtime returned without error")

// runOnce builds and runs one COSI runtime; a panic anywhere in it becomes an error.
func (r *Runtime) runOnce(ctx context.Context) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("controller runtime panicked: %v", p)
		}
	}()

	rt, err := cosiruntime.NewRuntime(r.state, quietReconciles(r.logger), r.options...)
	if err != nil {
		return fmt.Errorf("building controller runtime: %w", err)
	}

	for _, register := range r.registrars {
		if err = register(rt); err != nil {
			return fmt.Errorf("registering controllers: %w", err)
		}
	}

	if err = rt.Run(ctx); err != nil {
		return err
	}

	return errStopped
}

// quietReconciles returns logger with COSI's line for every reconcile that succeeded or skipped lowered from info
// to debug: a rollout runs thousands of reconciles, and what happened is in the transition lines
// (internal/metrics); failures stay errors.
func quietReconciles(logger *zap.Logger) *zap.Logger {
	return logger.WithOptions(zap.WrapCore(func(c zapcore.Core) zapcore.Core { return reconcileCore{c} }))
}

// reconcileCore lowers the level of COSI's per-reconcile lines; see quietReconciles.
type reconcileCore struct {
	zapcore.Core
}

// With implements zapcore.Core, keeping the lowering on the child core.
func (c reconcileCore) With(fields []zapcore.Field) zapcore.Core {
	return reconcileCore{c.Core.With(fields)}
}

// Check implements zapcore.Core: the reconcile lines are checked at debug.
func (c reconcileCore) Check(ent zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if ent.Level == zapcore.InfoLevel && (ent.Message == "reconcile succeeded" || ent.Message == "reconcile skipped") {
		ent.Level = zapcore.DebugLevel
	}

	return c.Core.Check(ent, ce)
}
