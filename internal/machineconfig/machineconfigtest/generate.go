// Package machineconfigtest generates real Talos machine configs for the tests of packages that patch them.
package machineconfigtest

import (
	"testing"
	"time"

	"github.com/siderolabs/talos/pkg/machinery/config"
	"github.com/siderolabs/talos/pkg/machinery/config/encoder"
	"github.com/siderolabs/talos/pkg/machinery/config/generate"
	"github.com/siderolabs/talos/pkg/machinery/config/generate/secrets"
	"github.com/siderolabs/talos/pkg/machinery/config/machine"
)

// Config returns a freshly generated config of a machine of type typ (with new secrets) for cluster name.
func Config(t testing.TB, name string, typ machine.Type) []byte {
	t.Helper()

	bundle, err := secrets.NewBundle(secrets.NewFixedClock(time.Now()), config.TalosVersionCurrent, secrets.WithECDSAServiceAccountKey())
	if err != nil {
		t.Fatalf("generating secrets: %v", err)
	}

	input, err := generate.NewInput(name, "https://"+name+".example:6443", "1.35.0", generate.WithSecretsBundle(bundle))
	if err != nil {
		t.Fatalf("preparing a machine config: %v", err)
	}

	cfg, err := input.Config(typ)
	if err != nil {
		t.Fatalf("generating a machine config: %v", err)
	}

	out, err := cfg.EncodeBytes(encoder.WithComments(encoder.CommentsDisabled))
	if err != nil {
		t.Fatalf("encoding a machine config: %v", err)
	}

	return out
}
