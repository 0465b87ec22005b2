package controllers

import (
	"context"
	"fmt"

	"github.com/cosi-project/runtime/pkg/controller"
	"github.com/cosi-project/runtime/pkg/safe"
	"github.com/cosi-project/runtime/pkg/state"

	"github.com/upshift-io/upshift/internal/kuberollout"
	"github.com/upshift-io/upshift/internal/rollout"
	"github.com/upshift-io/upshift/resources/upgrade"
)

// readKubernetesUpgrade reads the cluster's KubernetesUpgradeStatus, nil when it has none.
func readKubernetesUpgrade(ctx context.Context, r controller.Reader, id string) (*upgrade.KubernetesUpgradeStatusSpec, error) {
	k, err := safe.ReaderGetByID[*upgrade.KubernetesUpgradeStatus](ctx, r, id)
	if err != nil {
		if state.IsNotFoundError(err) {
			return nil, nil
		}

		return nil, fmt.Errorf("reading Kubernetes upgrade status of cluster %q: %w", id, err)
	}

	return k.TypedSpec(), nil
}

// yieldToKubernetes makes the Talos rollout's decision next stand aside for the cluster's Kubernetes upgrade, by
// kuberollout.TalosYield (the one home of the rule): it admits no machine and says which upgrade it waits for.
// The Kubernetes upgrade changes nothing before it reads YieldsTo, so the two never run at once.
func yieldToKubernetes(view rollout.ClusterView, prev upgrade.TalosUpgradeStatusSpec, kube *upgrade.KubernetesUpgradeStatusSpec, next *upgrade.TalosUpgradeStatusSpec) {
	next.YieldsTo = kuberollout.TalosYield(view, prev, kube)
	if next.YieldsTo == "" {
		return
	}

	next.Admitted, next.Current = nil, nil

	if next.Phase != upgrade.PhaseDone {
		next.Phase, next.Reason = upgrade.PhasePending, fmt.Sprintf("waiting for the Kubernetes upgrade to %s to finish (%s)", next.YieldsTo, kube.Phase)
	}
}
