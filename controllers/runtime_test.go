package controllers_test

import (
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cosi-project/runtime/pkg/controller"
	"github.com/cosi-project/runtime/pkg/resource/rtestutils"
	"github.com/stretchr/testify/assert"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/upshift-io/upshift/controllers"
	"github.com/upshift-io/upshift/resources"
	"github.com/upshift-io/upshift/resources/observe"
)

// A runtime that fails to start, or panics, is restarted, and its controllers end up running.
func TestRuntimeRestartsAfterErrorAndPanic(t *testing.T) {
	t.Parallel()

	var calls atomic.Int32

	flaky := func(engine controller.Engine) error {
		switch calls.Add(1) {
		case 1:
			return errors.New("first start fails")
		case 2:
			panic("second start panics")
		default:
			return controllers.Builtin(engine)
		}
	}

	ctx, st := startRuntime(t,
		controllers.WithRegistrars(flaky),
		controllers.WithRestartBackoff(time.Millisecond, 10*time.Millisecond),
	)
	createFleet(ctx, t, st)

	rtestutils.AssertResource(ctx, t, st, "prod", func(s *observe.ClusterSummary, a *assert.Assertions) {
		a.Equal(3, s.TypedSpec().Machines)
	}, rtestutils.WithNamespace(resources.Namespace))

	assert.Equal(t, int32(3), calls.Load())
}

// COSI's line for every reconcile is at debug, so a rollout's log at info holds its transitions, not thousands of
// "reconcile succeeded"; failures and everything else keep their level.
func TestRuntimeLogsReconcilesAtDebug(t *testing.T) {
	t.Parallel()

	core, logs := observer.New(zapcore.InfoLevel)
	logger := controllers.QuietReconciles(zap.New(core)).With(zap.String("controller", "c"))

	logger.Info("reconcile succeeded")
	logger.Info("reconcile skipped")
	logger.Error("reconcile failed")
	logger.Info("something else")

	var messages []string
	for _, e := range logs.All() {
		messages = append(messages, e.Level.String()+" "+e.Message)
	}

	assert.Equal(t, []string{"error reconcile failed", "info something else"}, messages)

	debugCore, debugLogs := observer.New(zapcore.DebugLevel)
	controllers.QuietReconciles(zap.New(debugCore)).Info("reconcile succeeded")

	if assert.Equal(t, 1, debugLogs.Len()) {
		assert.Equal(t, zapcore.DebugLevel, debugLogs.All()[0].Level)
	}
}
