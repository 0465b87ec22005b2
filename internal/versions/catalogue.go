package versions

import (
	"fmt"
	"slices"
	"strings"
	"sync"
)

// DefaultInstallerRepository is where Talos publishes its installer images; a Machine may name another (a
// mirror or an image factory) and the release's tag is appended to it.
const DefaultInstallerRepository = "ghcr.io/siderolabs/installer"

// Release is one Talos release the engine may install: its version and the tag of its installer image.
type Release struct {
	// Version is the Talos release.
	Version Version
	// InstallerTag is the tag of its installer image, usually Version.Tag().
	InstallerTag string
}

// Image returns the installer image reference for this release in repository (DefaultInstallerRepository
// when empty), e.g. "ghcr.io/siderolabs/installer:v1.14.1".
func (r Release) Image(repository string) string {
	if repository == "" {
		repository = DefaultInstallerRepository
	}

	return repository + ":" + r.InstallerTag
}

// shipped lists the releases the engine knows without being told: the .0 of every release line whose upgrade
// rules machinery v1.14.1 carries from 1.10 on, and the latest patch of each line from 1.11 (the ones the emulated
// fleet runs). Planning prefers the latest patch of an intermediate line. Operators add the patches they run with
// Catalogue.Add (no network is ever used to discover releases).
var shipped = []string{"1.10.0", "1.11.0", "1.11.6", "1.12.0", "1.12.6", "1.13.0", "1.13.4", "1.14.0", "1.14.1"}

// Catalogue is the set of Talos releases upgrades may go to or through, kept sorted by version. It is safe for
// concurrent use: the engine reads it while an operator extends it.
type Catalogue struct {
	mu       sync.RWMutex
	releases []Release
	// generation counts changes to releases; graphs caches planning graphs per Kubernetes version for it.
	generation int
	graphs     map[string]*graph
}

// NewCatalogue returns an empty catalogue; Shipped returns the one the engine starts with.
func NewCatalogue() *Catalogue { return &Catalogue{} }

// Shipped returns a new catalogue holding the releases the engine ships with.
func Shipped() *Catalogue {
	c := NewCatalogue()

	for _, v := range shipped {
		c.add(Release{Version: MustParse(v), InstallerTag: MustParse(v).Tag()})
	}

	return c
}

// Add puts a release into the catalogue, or replaces the installer tag of one it already holds. An empty
// installerTag means the release's own tag ("v1.14.1"). Bad input is refused and leaves the catalogue as it was.
func (c *Catalogue) Add(version, installerTag string) error {
	v, err := Parse(version)
	if err != nil {
		return fmt.Errorf("adding release to the catalogue: %w", err)
	}

	installerTag = strings.TrimSpace(installerTag)
	if installerTag == "" {
		installerTag = v.Tag()
	}

	if strings.ContainsAny(installerTag, ":@/ \t") {
		return fmt.Errorf("adding release %s to the catalogue: installer tag %q is not a tag", v, installerTag)
	}

	c.mu.Lock()
	defer c.mu.Unlock()

	c.add(Release{Version: v, InstallerTag: installerTag})

	return nil
}

// add inserts or replaces r keeping the order and drops the cached graphs; the caller holds mu (or owns c
// exclusively).
func (c *Catalogue) add(r Release) {
	c.generation++
	c.graphs = nil

	i, found := slices.BinarySearchFunc(c.releases, r.Version, func(e Release, v Version) int { return e.Version.Compare(v) })
	if found {
		c.releases[i] = r

		return
	}

	c.releases = slices.Insert(c.releases, i, r)
}

// Releases returns a copy of every release, oldest first.
func (c *Catalogue) Releases() []Release {
	c.mu.RLock()
	defer c.mu.RUnlock()

	return slices.Clone(c.releases)
}

// Lookup returns the release of version v, if the catalogue holds it.
func (c *Catalogue) Lookup(v Version) (Release, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()

	i, found := slices.BinarySearchFunc(c.releases, v, func(e Release, v Version) int { return e.Version.Compare(v) })
	if !found {
		return Release{}, false
	}

	return c.releases[i], true
}

// Known is the set of versions an engine can roll out: its Talos catalogue and its Kubernetes releases. It
// implements resources.KnownVersions, so the validating state refuses a Cluster asking for a version the engine's
// own configuration cannot plan to. It reads the catalogue on every call, so a release added later counts.
type Known struct {
	// Talos is the engine's release catalogue.
	Talos *Catalogue
	// Kubernetes are the Kubernetes releases the engine knows, as kuberollout.Policy.Releases takes them.
	Kubernetes []string
}

// TalosVersions implements resources.KnownVersions.
func (k Known) TalosVersions() []string {
	releases := k.Talos.Releases()

	tags := make([]string, len(releases))
	for i, r := range releases {
		tags[i] = r.Version.Tag()
	}

	return tags
}

// KubernetesVersions implements resources.KnownVersions, each as a tag (v1.37.2) like Cluster.kubernetesVersion.
func (k Known) KubernetesVersions() []string {
	tags := make([]string, len(k.Kubernetes))
	for i, v := range k.Kubernetes {
		tags[i] = "v" + strings.TrimPrefix(v, "v")
	}

	return tags
}
