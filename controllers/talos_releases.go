package controllers

import (
	"context"
	"fmt"

	"github.com/cosi-project/runtime/pkg/controller"
	"github.com/cosi-project/runtime/pkg/safe"
	"go.uber.org/zap"

	"github.com/upshift-io/upshift/internal/versions"
	"github.com/upshift-io/upshift/resources"
	"github.com/upshift-io/upshift/resources/upgrade"
)

// TalosReleasesController publishes the engine's release catalogue as the TalosReleases resource when the runtime
// starts, so clients plan with the engine's releases (the CLI's dry run asks the server for them).
type TalosReleasesController struct {
	catalogue *versions.Catalogue
}

// NewTalosReleasesController returns the controller for catalogue.
func NewTalosReleasesController(catalogue *versions.Catalogue) *TalosReleasesController {
	return &TalosReleasesController{catalogue: catalogue}
}

// Name implements controller.Controller.
func (ctrl *TalosReleasesController) Name() string { return "TalosReleasesController" }

// Inputs implements controller.Controller: none, the catalogue is configuration.
func (ctrl *TalosReleasesController) Inputs() []controller.Input { return nil }

// Outputs implements controller.Controller.
func (ctrl *TalosReleasesController) Outputs() []controller.Output {
	return []controller.Output{{Type: upgrade.TalosReleasesType, Kind: controller.OutputExclusive}}
}

// Run implements controller.Controller: it writes the catalogue once, then waits for the runtime to stop.
func (ctrl *TalosReleasesController) Run(ctx context.Context, r controller.Runtime, _ *zap.Logger) error {
	if err := safe.WriterModify(ctx, r, upgrade.NewTalosReleases(), func(res *upgrade.TalosReleases) error {
		res.TypedSpec().Releases = res.TypedSpec().Releases[:0]

		for _, rel := range ctrl.catalogue.Releases() {
			res.TypedSpec().Releases = append(res.TypedSpec().Releases, upgrade.TalosRelease{Version: rel.Version.Tag(), InstallerTag: rel.InstallerTag})
		}

		return nil
	}); err != nil {
		return fmt.Errorf("publishing the Talos release catalogue in %s: %w", resources.Namespace, err)
	}

	<-ctx.Done()

	return nil
}

// CatalogueOf turns a published TalosReleases back into a catalogue to plan with.
func CatalogueOf(spec *upgrade.TalosReleasesSpec) (*versions.Catalogue, error) {
	c := versions.NewCatalogue()

	for _, rel := range spec.Releases {
		if err := c.Add(rel.Version, rel.InstallerTag); err != nil {
			return nil, err
		}
	}

	return c, nil
}
