package upshift_test

import (
	"context"
	"fmt"
	"log"
	"os"

	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/safe"
	"github.com/cosi-project/runtime/pkg/state"

	"github.com/upshift-io/upshift"
	"github.com/upshift-io/upshift/resources/cluster"
	"github.com/upshift-io/upshift/resources/observe"
)

// A management plane embeds the engine: it creates a Cluster and its Machines through the Go API and watches the
// engine's per-cluster summary follow.
func Example() {
	dataDir, err := os.MkdirTemp("", "upshift-example")
	if err != nil {
		log.Fatal(err)
	}

	defer os.RemoveAll(dataDir) //nolint:errcheck

	engine, err := upshift.New(upshift.WithDataDir(dataDir), upshift.WithListenAddress("127.0.0.1:0"))
	if err != nil {
		log.Fatal(err)
	}

	runCtx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)

	go func() { done <- engine.Run(runCtx) }()

	// Writes are validated and logged with the writer named here.
	ctx := upshift.WithWriter(runCtx, "portal:alice")
	st := engine.State()

	prod := cluster.NewCluster("prod")
	prod.TypedSpec().TalosVersion = "v1.14.1"
	prod.TypedSpec().KubernetesVersion = "v1.37.2"

	if err = st.Create(ctx, prod); err != nil {
		log.Fatal(err)
	}

	for _, id := range []string{"prod-cp-1", "prod-w-1"} {
		m := cluster.NewMachine(id)
		m.TypedSpec().Cluster = "prod"
		m.TypedSpec().Role = cluster.RoleWorker
		m.TypedSpec().Endpoint = "192.0.2.10:50000"

		if id == "prod-cp-1" {
			m.TypedSpec().Role = cluster.RoleControlPlane
		}

		if err = st.Create(ctx, m); err != nil {
			log.Fatal(err)
		}
	}

	// An invalid write is refused with an error that names the field.
	bad := cluster.NewCluster("broken")
	bad.TypedSpec().TalosVersion = "latest"
	fmt.Println(st.Create(ctx, bad))

	summary, err := safe.StateWatchFor[*observe.ClusterSummary](ctx, st, observe.NewClusterSummary("prod").Metadata(),
		state.WithCondition(func(r resource.Resource) (bool, error) {
			s, ok := r.(*observe.ClusterSummary)

			return ok && s.TypedSpec().Machines == 2, nil
		}))
	if err != nil {
		log.Fatal(err)
	}

	fmt.Printf("cluster %s: %d control plane, %d worker, Talos %s\n", summary.Metadata().ID(),
		summary.TypedSpec().ControlPlanes, summary.TypedSpec().Workers, summary.TypedSpec().TalosVersion)

	stop()

	if err = <-done; err != nil {
		log.Fatal(err)
	}

	// Output:
	// Cluster "broken" is invalid: spec.talosVersion: "latest" is not a version like v1.2.3; spec.kubernetesVersion: is required (a version like v1.2.3)
	// cluster prod: 1 control plane, 1 worker, Talos v1.14.1
}
