package controllers_test

import (
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cosi-project/runtime/pkg/controller"
	"github.com/cosi-project/runtime/pkg/resource/rtestutils"
	"github.com/stretchr/testify/assert"

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
