package talosemu

import (
	"fmt"
	"slices"
	"strings"

	"github.com/blang/semver/v4"
	"github.com/siderolabs/talos/pkg/machinery/api/machine"
	"github.com/siderolabs/talos/pkg/machinery/compatibility"
)

// InstallerImageRepository is the repository the emulator's nodes install Talos from; any repository is accepted
// as long as the tag names a supported version, so factory images work too.
const InstallerImageRepository = "ghcr.io/siderolabs/installer"

// supportedVersions lists the Talos versions the emulator can run, oldest first. It spans a legacy release without
// LifecycleService/ImageService (< 1.13) and releases with them, so both upgrade flows and multi-hop plans get
// exercised; neighbours are upgradeable according to machinery's compatibility tables.
var supportedVersions = []string{"1.11.6", "1.12.6", "1.13.4", "1.14.1"}

// DefaultTalosVersion is the version fleet nodes run when none is configured: a legacy one, so the default fleet can
// be upgraded through both API flows.
const DefaultTalosVersion = "1.12.6"

// DefaultKubernetesVersion is the Kubernetes version of a fleet when none is configured; every supported Talos
// version supports it.
const DefaultKubernetesVersion = "1.34.3"

// lifecycleServiceMinVersion is the first Talos minor that serves LifecycleService and ImageService; older nodes
// answer Unimplemented, which is how real clients detect that they must use the legacy MachineService.Upgrade.
const lifecycleServiceMinVersion = "1.13.0"

// finalConfigsMinVersion is the first Talos minor that renders control-plane static pods from "final-" config
// resources (kube-apiserver's APIServerConfig "final-kube-apiserver", ...), which clients watch first.
const finalConfigsMinVersion = "1.14.0"

// SupportedVersions returns the Talos versions (without a "v" prefix) the emulator can run, oldest first, so tests
// can plan an upgrade from the oldest supported version to the newest.
func SupportedVersions() []string {
	return slices.Clone(supportedVersions)
}

// InstallerImage returns the installer image reference that installs version v on an emulated node.
func InstallerImage(v string) string {
	return InstallerImageRepository + ":v" + strings.TrimPrefix(v, "v")
}

// normalizeVersion checks that v is a supported Talos version and returns it without the "v" prefix.
func normalizeVersion(v string) (string, error) {
	v = strings.TrimPrefix(strings.TrimSpace(v), "v")
	if !slices.Contains(supportedVersions, v) {
		return "", fmt.Errorf("talos version %q is not supported by the emulator (supported: %s)", v, strings.Join(supportedVersions, ", "))
	}

	return v, nil
}

// versionFromImage extracts the Talos version an installer image reference would install: the tag after the last
// ":" (a digest suffix is ignored). Unknown versions fail the way a missing image does on a real node.
func versionFromImage(ref string) (string, error) {
	if ref == "" {
		return "", fmt.Errorf("installer image is empty")
	}

	ref, _, _ = strings.Cut(ref, "@")

	slash := strings.LastIndex(ref, "/")
	colon := strings.LastIndex(ref, ":")

	if colon <= slash {
		return "", fmt.Errorf("installer image %q has no version tag", ref)
	}

	v, err := normalizeVersion(ref[colon+1:])
	if err != nil {
		return "", fmt.Errorf("pulling image %q: not found: %w", ref, err)
	}

	return v, nil
}

// checkUpgradeable applies machinery's compatibility rules to an install of target on a node running host.
func checkUpgradeable(host, target string) error {
	hostVersion, err := compatibility.ParseTalosVersion(&machine.VersionInfo{Tag: "v" + host})
	if err != nil {
		return fmt.Errorf("parsing host version %q: %w", host, err)
	}

	targetVersion, err := compatibility.ParseTalosVersion(&machine.VersionInfo{Tag: "v" + target})
	if err != nil {
		return fmt.Errorf("parsing target version %q: %w", target, err)
	}

	return targetVersion.UpgradeableFrom(hostVersion)
}

// servesLifecycleAPI reports whether Talos version v (already normalized) serves LifecycleService and
// ImageService.
func servesLifecycleAPI(v string) bool { return atLeast(v, lifecycleServiceMinVersion) }

// servesFinalConfigs reports whether Talos version v publishes "final-" control-plane config resources.
func servesFinalConfigs(v string) bool { return atLeast(v, finalConfigsMinVersion) }

// atLeast reports whether version v (already normalized) is min or later.
func atLeast(v, min string) bool {
	parsed, err := semver.Parse(v)

	return err == nil && parsed.GTE(semver.MustParse(min))
}
