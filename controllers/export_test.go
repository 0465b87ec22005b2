package controllers

import (
	"context"

	"github.com/upshift-io/upshift/internal/talos"
)

// NewCredentialsConnectorDialing is NewCredentialsConnector with its Talos clients made by dial, so tests put the
// connector's client handling in front of a double.
func NewCredentialsConnectorDialing(dial func(context.Context, ...talos.Option) (talos.API, error)) *CredentialsConnector {
	c := NewCredentialsConnector()
	c.dial = dial

	return c
}

// Executors counts the machine executors alive.
func (ctrl *MachineUpgradeStatusController) Executors() int { return ctrl.exec.count() }

// QuietReconciles is quietReconciles, the logger the COSI runtime is given.
var QuietReconciles = quietReconciles
