package controllers

import (
	"context"
	"fmt"

	"github.com/cosi-project/runtime/pkg/controller"
	"github.com/cosi-project/runtime/pkg/safe"
	"github.com/cosi-project/runtime/pkg/state"

	"github.com/upshift-io/upshift/resources/upgrade"
)

// readKubernetesUpgrade reads the cluster's KubernetesUpgradeStatus, nil when it has none: its claim on the cluster
// is one of the inputs of the turn (rollout.Turn).
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
