// Package catalog lists every upshift resource type, so the engine can register them all and clients can turn a
// type name or alias into a typed resource without knowing which domain package defines it.
package catalog

import (
	"context"
	"strings"

	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/resource/meta"
	"github.com/cosi-project/runtime/pkg/state/registry"

	"github.com/upshift-io/upshift/resources/cluster"
	"github.com/upshift-io/upshift/resources/manifest"
	"github.com/upshift-io/upshift/resources/observe"
	"github.com/upshift-io/upshift/resources/upgrade"
)

// domains are the domain packages, inputs first.
var domains = []struct {
	resources func() []meta.ResourceWithRD
	register  func(context.Context, *registry.ResourceRegistry) error
}{
	{cluster.Resources, cluster.Register},
	{observe.Resources, observe.Register},
	{upgrade.Resources, upgrade.Register},
	{manifest.Resources, manifest.Register},
}

// All returns an empty value of every upshift type, inputs first, each after the types it references (the order
// a file of them is applied in).
func All() []meta.ResourceWithRD {
	var all []meta.ResourceWithRD

	for _, domain := range domains {
		all = append(all, domain.resources()...)
	}

	return all
}

// Register adds every upshift resource definition to the engine's registry.
func Register(ctx context.Context, reg *registry.ResourceRegistry) error {
	for _, domain := range domains {
		if err := domain.register(ctx, reg); err != nil {
			return err
		}
	}

	return nil
}

// Lookup finds the type named by name: its full type, or any alias of it, case-insensitively.
func Lookup(name string) (meta.ResourceWithRD, bool) {
	for _, r := range All() {
		rd := r.ResourceDefinition()
		if strings.EqualFold(rd.Type, name) {
			return r, true
		}

		filled := rd
		if err := filled.Fill(); err != nil {
			continue
		}

		for _, alias := range append(filled.AllAliases, resource.Type(filled.DisplayType)) {
			if strings.EqualFold(alias, name) {
				return r, true
			}
		}
	}

	return nil, false
}

// Rank returns the position of typ in All, so documents can be applied in dependency order; unknown types sort last.
func Rank(typ resource.Type) int {
	all := All()
	for i, r := range all {
		if r.ResourceDefinition().Type == typ {
			return i
		}
	}

	return len(all)
}
