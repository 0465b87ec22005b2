// Package versions holds the Talos version rules the engine plans upgrades with: machinery's compatibility
// tables (which hosts a target accepts, which Kubernetes versions it supports), the direction of a change
// (upgrade or downgrade), a catalogue of known releases with their installer tags, and the shortest chain of
// intermediate releases when no direct path exists.
//
// Everything here is pure and offline: the catalogue is shipped with the engine and extended at run time.
package versions

import (
	"errors"
	"fmt"
	"strings"

	"github.com/blang/semver/v4"
	"github.com/siderolabs/talos/pkg/machinery/api/machine"
	"github.com/siderolabs/talos/pkg/machinery/compatibility"
)

// ErrInvalidVersion is wrapped by every error about a version string that does not parse, so callers (input
// validation, the CLI) can tell bad input from a refused plan with errors.Is.
var ErrInvalidVersion = errors.New("invalid version")

// Version is a parsed Talos or Kubernetes version. It keeps the machinery form next to the semver one, so
// compatibility checks never re-parse.
type Version struct {
	sem   semver.Version
	talos *compatibility.TalosVersion
}

// Parse reads a Talos version such as "v1.14.1" or "1.13.0-beta.0". A leading "v" is optional; anything that
// is not a full major.minor.patch version is rejected (a bare "1.14" is ambiguous for an installer tag).
func Parse(s string) (Version, error) {
	trimmed := strings.TrimPrefix(strings.TrimSpace(s), "v")

	sem, err := semver.Parse(trimmed)
	if err != nil {
		return Version{}, fmt.Errorf("%w %q: %w", ErrInvalidVersion, s, err)
	}

	talos, err := compatibility.ParseTalosVersion(&machine.VersionInfo{Tag: "v" + trimmed})
	if err != nil {
		return Version{}, fmt.Errorf("%w %q: %w", ErrInvalidVersion, s, err)
	}

	return Version{sem: sem, talos: talos}, nil
}

// MustParse is Parse for versions written in the engine's own source (the shipped catalogue); it panics on a
// typo there, which a unit test catches, and must never see user input.
func MustParse(s string) Version {
	v, err := Parse(s)
	if err != nil {
		panic(err)
	}

	return v
}

// String returns the version without the "v" prefix, e.g. "1.14.1".
func (v Version) String() string { return v.sem.String() }

// Tag returns the version as Talos tags its releases, e.g. "v1.14.1".
func (v Version) Tag() string { return "v" + v.sem.String() }

// IsZero reports whether v is the zero Version (never parsed).
func (v Version) IsZero() bool { return v.talos == nil }

// Compare orders versions by semver precedence: -1, 0 or +1.
func (v Version) Compare(o Version) int { return v.sem.Compare(o.sem) }

// Equal reports whether both versions have the same semver precedence ("v1.14.1" equals "1.14.1").
func (v Version) Equal(o Version) bool { return v.sem.Equals(o.sem) }

// MajorMinor returns the release line, e.g. "1.14".
func (v Version) MajorMinor() string { return fmt.Sprintf("%d.%d", v.sem.Major, v.sem.Minor) }

// SupportsLifecycleService reports whether a Talos release serves ImageService.Pull and
// LifecycleService.Upgrade (Talos 1.13 and later); older ones only have the legacy MachineService.Upgrade.
func (v Version) SupportsLifecycleService() bool {
	return v.sem.Major > 1 || (v.sem.Major == 1 && v.sem.Minor >= 13)
}

// UsesLifecycleFlow reports whether moving a machine from host to target uses the Talos >= 1.13 flow
// (ImageService.Pull, LifecycleService.Upgrade, then the engine reboots); it needs both sides to be 1.13 or
// later, since the running host serves the API and the target's installer must speak it. Otherwise the legacy
// MachineService.Upgrade flow applies.
func UsesLifecycleFlow(host, target Version) bool {
	return host.SupportsLifecycleService() && target.SupportsLifecycleService()
}

// Direction says whether a version change is an upgrade or a downgrade, so the CLI and the status can say which.
type Direction int

// Directions of a change of Talos version.
const (
	// Same means nothing changes.
	Same Direction = iota
	// Upgrade means every machine moves to a newer release.
	Upgrade
	// Downgrade means every machine moves to an older release.
	Downgrade
	// Mixed means some machines move up and others down (a cluster left half-way through a change).
	Mixed
)

// String names the direction as the CLI prints it.
func (d Direction) String() string {
	switch d {
	case Same:
		return "none"
	case Upgrade:
		return "upgrade"
	case Downgrade:
		return "downgrade"
	case Mixed:
		return "upgrade and downgrade"
	default:
		return fmt.Sprintf("Direction(%d)", int(d))
	}
}

// DirectionOf says how moving every host to target changes the cluster.
func DirectionOf(hosts []Version, target Version) Direction {
	var up, down bool

	for _, h := range hosts {
		switch target.Compare(h) {
		case 1:
			up = true
		case -1:
			down = true
		}
	}

	switch {
	case up && down:
		return Mixed
	case up:
		return Upgrade
	case down:
		return Downgrade
	default:
		return Same
	}
}

// CheckDirect reports, with machinery's reason, why target cannot be installed directly over host (too old to
// upgrade from, too new to downgrade from, a denied host, or a target release machinery does not know); nil
// when it can.
func CheckDirect(host, target Version) error {
	if err := target.talos.UpgradeableFrom(host.talos); err != nil {
		return fmt.Errorf("%s from %s: %w", DirectionOf([]Version{host}, target), host, err)
	}

	return nil
}

// CheckKubernetes reports, with machinery's reason, why the Talos release target cannot run Kubernetes
// kubernetes; nil when it can. It is ErrInvalidVersion when kubernetes does not parse.
func CheckKubernetes(target Version, kubernetes string) error {
	k, err := parseKubernetes(kubernetes)
	if err != nil {
		return err
	}

	if err := k.SupportedWith(target.talos); err != nil {
		return fmt.Errorf("%w: %w", ErrKubernetesUnsupported, err)
	}

	return nil
}

// parseKubernetes reads a Kubernetes version as machinery does ("1.35.0", "v1.35.0", "1.35").
func parseKubernetes(s string) (*compatibility.KubernetesVersion, error) {
	k, err := compatibility.ParseKubernetesVersion(strings.TrimSpace(s))
	if err != nil {
		return nil, fmt.Errorf("%w Kubernetes version %q: %w", ErrInvalidVersion, s, err)
	}

	return k, nil
}
