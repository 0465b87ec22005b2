package kuberollout

import (
	"slices"
	"strings"

	"github.com/upshift-io/upshift/resources/cluster"
	"github.com/upshift-io/upshift/resources/upgrade"
)

// StaticPods are the control-plane components a control plane runs as static pods, in the order an upgrade
// changes them; a downgrade changes them in the reverse order.
var StaticPods = []upgrade.StepKind{upgrade.StepAPIServer, upgrade.StepControllerManager, upgrade.StepScheduler}

// Machine is what the step list knows of one machine.
type Machine struct {
	ID   string
	Role cluster.Role
}

// Steps are the ordered steps of every hop of plan over machines. Each hop is a full upgrade: its pre-checks,
// a pre-pull on every machine (control planes first), then, one control plane at a time, kube-apiserver,
// kube-controller-manager and kube-scheduler, then kube-proxy, then the kubelets, control planes first. A downgrade
// hop makes its changes in the reverse order (kubelets, workers first; kube-proxy; the static pods, last control
// plane first, kube-scheduler first), so a kubelet is never newer than its API server.
func Steps(plan Plan, machines []Machine) []upgrade.KubernetesUpgradeStep {
	ordered := slices.Clone(machines)
	slices.SortStableFunc(ordered, func(a, b Machine) int {
		if ca, cb := a.Role == cluster.RoleControlPlane, b.Role == cluster.RoleControlPlane; ca != cb {
			if ca {
				return -1
			}

			return 1
		}

		return strings.Compare(a.ID, b.ID)
	})

	var out []upgrade.KubernetesUpgradeStep

	for _, hop := range plan.Hops {
		step := func(kind upgrade.StepKind, machine string) upgrade.KubernetesUpgradeStep {
			return upgrade.KubernetesUpgradeStep{Kind: kind, Machine: machine, Version: hop, State: upgrade.StepPending}
		}

		out = append(out, step(upgrade.StepPreChecks, ""))

		for _, m := range ordered {
			out = append(out, step(upgrade.StepPrePull, m.ID))
		}

		var changes []upgrade.KubernetesUpgradeStep

		for _, m := range ordered {
			if m.Role == cluster.RoleControlPlane {
				for _, kind := range StaticPods {
					changes = append(changes, step(kind, m.ID))
				}
			}
		}

		changes = append(changes, step(upgrade.StepKubeProxy, ""))

		for _, m := range ordered {
			changes = append(changes, step(upgrade.StepKubelet, m.ID))
		}

		if plan.Direction == Downgrade {
			slices.Reverse(changes)
		}

		out = append(out, changes...)
	}

	return out
}

// Changes reports whether a step of kind changes a component (pre-checks and pre-pulls change nothing).
func Changes(kind upgrade.StepKind) bool {
	return kind != upgrade.StepPreChecks && kind != upgrade.StepPrePull
}

// Retag is image moved to version: the same repository, tag "v"+version, keeping a variant suffix such as the
// kubelet's "-fat" and dropping a digest.
func Retag(image, version string) string {
	ref, _, _ := strings.Cut(image, "@")

	repo, tag := ref, ""
	if i := strings.LastIndex(ref, ":"); i > strings.LastIndex(ref, "/") {
		repo, tag = ref[:i], ref[i+1:]
	}

	suffix := ""
	if i := strings.Index(tag, "-"); i >= 0 {
		suffix = tag[i:]
	}

	return repo + ":v" + Canonical(version) + suffix
}

// ImageVersion is the Kubernetes version an image's tag names ("" when it names none).
func ImageVersion(image string) string {
	ref, _, _ := strings.Cut(image, "@")

	i := strings.LastIndex(ref, ":")
	if i <= strings.LastIndex(ref, "/") {
		return ""
	}

	tag, _, _ := strings.Cut(ref[i+1:], "-")

	if _, err := parse(tag); err != nil {
		return ""
	}

	return Canonical(tag)
}
