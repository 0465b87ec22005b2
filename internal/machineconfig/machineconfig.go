// Package machineconfig computes a machine's effective Talos configuration (its base with the cluster's patches
// applied in order), its version, and a readable diff with secrets redacted (docs/architecture.md, "Config
// patches"). It is pure: the validating state, the CLI's dry run and the controllers all call it, so a patch is
// judged at write time exactly as it is rolled out.
package machineconfig

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"

	"github.com/pmezard/go-difflib/difflib"
	"github.com/siderolabs/talos/pkg/machinery/config"
	"github.com/siderolabs/talos/pkg/machinery/config/configloader"
	"github.com/siderolabs/talos/pkg/machinery/config/configpatcher"
	"github.com/siderolabs/talos/pkg/machinery/config/encoder"
)

// Patch is one patch of a machine's effective config.
type Patch struct {
	// ID names the patch in errors.
	ID string
	// Content is a strategic merge patch or a JSON (RFC 6902) patch.
	Content string
}

// installedMetal is the runtime mode configs are validated for: a bare-metal machine already installed, the mode an
// ApplyConfiguration to a running machine is judged in (the emulator judges the same way).
type installedMetal struct{}

func (installedMetal) String() string        { return "metal" }
func (installedMetal) RequiresInstall() bool { return false }
func (installedMetal) InContainer() bool     { return false }

// Parse loads a machine config and checks it the way Talos does before applying it.
func Parse(cfg []byte) (config.Provider, error) {
	p, err := configloader.NewFromBytes(cfg)
	if err != nil {
		return nil, fmt.Errorf("loading the config: %w", err)
	}

	if _, err = p.Validate(installedMetal{}); err != nil {
		return nil, fmt.Errorf("the config is not valid: %w", err)
	}

	return p, nil
}

// Effective applies patches to base in order and returns the resulting config, canonically encoded, after the
// config's own validation. The error names the patch that does not apply.
func Effective(base []byte, patches []Patch) ([]byte, error) {
	cfg := configpatcher.WithBytes(base)

	for _, patch := range patches {
		p, err := configpatcher.LoadPatch([]byte(patch.Content))
		if err != nil {
			return nil, fmt.Errorf("patch %q is not a Talos machine-config patch: %w", patch.ID, err)
		}

		if cfg, err = configpatcher.Apply(cfg, []configpatcher.Patch{p}); err != nil {
			return nil, fmt.Errorf("patch %q does not apply: %w", patch.ID, err)
		}
	}

	out, err := cfg.Bytes()
	if err != nil {
		return nil, fmt.Errorf("encoding the patched config: %w", err)
	}

	p, err := Parse(out)
	if err != nil {
		return nil, err
	}

	return Canonical(p)
}

// Canonical encodes p without comments, so two encodings of one config compare equal byte for byte.
func Canonical(p config.Provider) ([]byte, error) {
	out, err := p.EncodeBytes(encoder.WithComments(encoder.CommentsDisabled))
	if err != nil {
		return nil, fmt.Errorf("encoding the config: %w", err)
	}

	return out, nil
}

// Version names a canonical config: the first 12 hex digits of its SHA-256. Two machines on the same version run
// the same config; the version says nothing of the config's content, so it is safe to print.
func Version(canonical []byte) string {
	sum := sha256.Sum256(canonical)

	return hex.EncodeToString(sum[:6])
}

// Diff is a unified diff from one config to another with every secret redacted (keys, tokens, certificates'
// private parts), for status and dry runs; empty when they are the same.
func Diff(from, to []byte, fromName, toName string) (string, error) {
	a, err := redacted(from)
	if err != nil {
		return "", fmt.Errorf("%s: %w", fromName, err)
	}

	b, err := redacted(to)
	if err != nil {
		return "", fmt.Errorf("%s: %w", toName, err)
	}

	if a == b {
		return "", nil
	}

	diff, err := difflib.GetUnifiedDiffString(difflib.UnifiedDiff{
		A: difflib.SplitLines(a), B: difflib.SplitLines(b), FromFile: fromName, ToFile: toName, Context: 2,
	})
	if err != nil {
		return "", fmt.Errorf("diffing %s and %s: %w", fromName, toName, err)
	}

	return diff, nil
}

// Redacted is what a redacted secret reads as in diffs.
const Redacted = "******"

func redacted(cfg []byte) (string, error) {
	p, err := configloader.NewFromBytes(cfg)
	if err != nil {
		return "", fmt.Errorf("loading the config: %w", err)
	}

	out, err := Canonical(p.RedactSecrets(Redacted))
	if err != nil {
		return "", err
	}

	return strings.TrimRight(string(out), "\n") + "\n", nil
}
