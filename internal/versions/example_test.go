package versions_test

import (
	"fmt"

	"github.com/upshift-io/upshift/internal/versions"
)

// A cluster on Talos 1.11.6 cannot install 1.14.1 directly (1.14 needs a 1.12 host at least): the plan goes
// through the newest 1.13 release of the catalogue.
func ExampleCatalogue_Plan() {
	plan, err := versions.Shipped().Plan([]string{"v1.11.6", "v1.11.6", "v1.11.6"}, "1.34.3", "v1.14.1")
	if err != nil {
		fmt.Println(err)

		return
	}

	fmt.Println(plan)

	for _, hop := range plan.Hops {
		fmt.Println(hop.Image(""))
	}

	_, err = versions.Shipped().Plan([]string{"1.13.4"}, "1.31.0", "1.14.1")
	fmt.Println(err)

	// Output:
	// upgrade 1.11.6 -> 1.13.4 -> 1.14.1
	// ghcr.io/siderolabs/installer:v1.13.4
	// ghcr.io/siderolabs/installer:v1.14.1
	// planning the Talos change to 1.14.1: the cluster's Kubernetes 1.31.0 must change first: kubernetes version not supported: version of Kubernetes 1.31.0 is too old to be used with Talos 1.14.1
}
