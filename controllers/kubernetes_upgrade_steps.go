package controllers

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/cosi-project/runtime/pkg/controller"
	"github.com/cosi-project/runtime/pkg/safe"
	"github.com/cosi-project/runtime/pkg/state"
	"go.uber.org/zap"

	"github.com/upshift-io/upshift/internal/kube"
	"github.com/upshift-io/upshift/internal/kuberollout"
	"github.com/upshift-io/upshift/internal/talos"
	"github.com/upshift-io/upshift/resources/cluster"
	"github.com/upshift-io/upshift/resources/upgrade"
)

// kubeStepRun executes one Running step of a cluster's Kubernetes upgrade and records how it ended.
type kubeStepRun struct {
	ctrl    *KubernetesUpgradeStatusController
	r       controller.QRuntime
	logger  *zap.Logger
	cluster string
	step    upgrade.KubernetesUpgradeStep
	// shown is the progress last recorded, so an unchanged one is not written again.
	shown string
}

// errStepFailed marks a failure for good; any other error is tried again until the step timeout.
var errStepFailed = errors.New("step failed")

func failed(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errStepFailed, fmt.Sprintf(format, args...))
}

// execute runs the step to its end and records it; a stopped runtime records nothing, and its successor resumes.
func (run *kubeStepRun) execute(ctx context.Context) {
	if !run.stillRunning(ctx) {
		return
	}

	err := run.do(ctx)
	if ctx.Err() != nil {
		return
	}

	state, msg := upgrade.StepDone, ""
	if err != nil {
		state, msg = upgrade.StepFailed, strings.TrimPrefix(err.Error(), errStepFailed.Error()+": ")
		run.logger.Warn("Kubernetes upgrade step failed", zap.Error(err))
	}

	run.write(ctx, func(s *upgrade.KubernetesUpgradeStep) {
		s.State, s.Error, s.FinishedAt = state, msg, time.Now()
	})
}

// stillRunning reads whether the step is still Running in the status, again after a pause while the read fails,
// until ctx ends. A reconcile starts the executors of the steps its own write left Running; an executor of the same
// step may have finished since, recorded the step, and left, and the step's side effect must not be made twice.
func (run *kubeStepRun) stillRunning(ctx context.Context) bool {
	for {
		res, err := safe.ReaderGetByID[*upgrade.KubernetesUpgradeStatus](ctx, run.r, run.cluster)
		if err == nil {
			return slices.ContainsFunc(res.TypedSpec().Steps, func(s upgrade.KubernetesUpgradeStep) bool {
				return s.Same(run.step) && s.State == upgrade.StepRunning
			})
		}

		if state.IsNotFoundError(err) || ctx.Err() != nil {
			return false
		}

		run.logger.Error("reading the Kubernetes upgrade status failed; retrying", zap.Error(err))

		if sleep(ctx, run.ctrl.cfg.RetryDelay) != nil {
			return false
		}
	}
}

// write changes the step in the status, again after a pause while the write fails, until ctx ends. A step that is
// no longer Running there (a new plan replaced it) is left alone.
func (run *kubeStepRun) write(ctx context.Context, change func(*upgrade.KubernetesUpgradeStep)) {
	for {
		err := safe.WriterModify(ctx, run.r, upgrade.NewKubernetesUpgradeStatus(run.cluster), func(res *upgrade.KubernetesUpgradeStatus) error {
			steps := res.TypedSpec().Steps
			if i := slices.IndexFunc(steps, func(s upgrade.KubernetesUpgradeStep) bool { return s.Same(run.step) && s.State == upgrade.StepRunning }); i >= 0 {
				change(&steps[i])
			}

			return nil
		})
		if err == nil || ctx.Err() != nil {
			return
		}

		run.logger.Error("recording Kubernetes upgrade step failed; retrying", zap.Error(err))

		if sleep(ctx, run.ctrl.cfg.RetryDelay) != nil {
			return
		}
	}
}

func (run *kubeStepRun) progress(ctx context.Context, msg string) {
	if msg == run.shown {
		return
	}

	run.shown = msg
	run.write(ctx, func(s *upgrade.KubernetesUpgradeStep) { s.Progress = msg })
}

// until tries check until it says done, fails for good, or the step timeout (from the step's StartedAt, so it
// survives restarts) passes; what names the wait in the timeout's error.
func (run *kubeStepRun) until(ctx context.Context, what string, check func() (bool, error)) error {
	deadline := run.step.StartedAt.Add(run.ctrl.cfg.StepTimeout)
	if run.step.StartedAt.IsZero() {
		deadline = time.Now().Add(run.ctrl.cfg.StepTimeout)
	}

	for {
		done, err := check()

		switch {
		case done:
			return nil
		case errors.Is(err, errStepFailed):
			return err
		case ctx.Err() != nil:
			return ctx.Err()
		case time.Now().After(deadline):
			if err != nil {
				return failed("timeout: %s: %v", what, err)
			}

			return failed("timeout: %s", what)
		}

		if sleep(ctx, run.ctrl.cfg.RetryDelay) != nil {
			return ctx.Err()
		}
	}
}

// machines are the cluster's machines by ID.
func (run *kubeStepRun) machines(ctx context.Context) (map[string]*cluster.MachineSpec, []string, []string, error) {
	ms, err := clusterMachines(ctx, run.r, run.cluster)
	if err != nil {
		return nil, nil, nil, err
	}

	out := map[string]*cluster.MachineSpec{}

	var cps, workers []string

	for _, m := range ms {
		out[m.Metadata().ID()] = m.TypedSpec()
		if m.TypedSpec().Role == cluster.RoleControlPlane {
			cps = append(cps, m.Metadata().ID())
		} else {
			workers = append(workers, m.Metadata().ID())
		}
	}

	slices.Sort(cps)
	slices.Sort(workers)

	return out, cps, workers, nil
}

// clients reach the cluster through the machine endpoint, the first control plane's for cluster-wide steps.
func (run *kubeStepRun) clients(ctx context.Context, endpoint string) (talos.API, kube.API, ClusterAccess, error) {
	access, err := readAccess(ctx, run.r, run.cluster, endpoint)
	if err != nil {
		return nil, nil, access, err
	}

	tal, err := run.ctrl.conn.Talos(ctx, access)
	if err != nil {
		return nil, nil, access, err
	}

	k, err := run.ctrl.conn.Kubernetes(ctx, access)
	if errors.Is(err, ErrNoKubernetes) {
		return nil, nil, access, failed("a Kubernetes upgrade needs the cluster's kubeconfig in its Credentials")
	}

	return tal, k, access, err
}

// do makes the step's side effect and waits for its outcome (docs/architecture.md, "The Kubernetes step machine").
func (run *kubeStepRun) do(ctx context.Context) error {
	machines, cps, workers, err := run.machines(ctx)
	if err != nil {
		return err
	}

	if len(cps) == 0 {
		return failed("the cluster has no control plane")
	}

	node := run.step.Machine
	endpoint := machines[cps[0]].Endpoint

	if m, ok := machines[node]; ok {
		endpoint = m.Endpoint
	} else if node != "" {
		return failed("machine %s left the cluster", node)
	}

	var (
		tal    talos.API
		k      kube.API
		access ClusterAccess
	)

	if err = run.until(ctx, "reaching the cluster", func() (bool, error) {
		tal, k, access, err = run.clients(ctx, endpoint)

		return err == nil, err
	}); err != nil {
		return err
	}

	switch run.step.Kind {
	case upgrade.StepPreChecks:
		return run.preChecks(ctx, tal, access, cps, workers)
	case upgrade.StepPrePull:
		return run.prePull(ctx, tal, node)
	case upgrade.StepAPIServer, upgrade.StepControllerManager, upgrade.StepScheduler:
		return run.staticPod(ctx, tal, k, node, run.nodeName(ctx, node))
	case upgrade.StepKubeProxy:
		return run.kubeProxy(ctx, tal, k, cps)
	case upgrade.StepKubelet:
		return run.kubelet(ctx, tal, k, node, run.nodeName(ctx, node))
	default:
		return failed("unknown step kind %q", run.step.Kind)
	}
}

// nodeName is the machine's Kubernetes node name as observed, its ID when not observed.
func (run *kubeStepRun) nodeName(ctx context.Context, id string) string {
	view, err := ReadClusterView(ctx, run.r, run.cluster)
	if err == nil {
		for _, m := range view.Machines {
			if m.ID == id && m.Status != nil && m.Status.NodeName != "" {
				return m.Status.NodeName
			}
		}
	}

	return id
}

// hopFrom is the version the step's hop starts from: the previous hop, or where the plan started.
func (run *kubeStepRun) hopFrom(ctx context.Context) string {
	st, err := safe.ReaderGetByID[*upgrade.KubernetesUpgradeStatus](ctx, run.r, run.cluster)
	if err != nil {
		return run.step.Version
	}

	s := st.TypedSpec()
	if i := slices.Index(s.Plan, run.step.Version); i > 0 {
		return s.Plan[i-1]
	}

	return s.FromVersion
}

// preChecks runs go-kubernetes' checks of the hop and records every result; a failure that the Cluster does not
// skip fails the step, naming what was found.
func (run *kubeStepRun) preChecks(ctx context.Context, tal talos.API, access ClusterAccess, cps, workers []string) error {
	from := run.hopFrom(ctx)

	var findings []talos.Finding

	if err := run.until(ctx, "running the pre-checks", func() (bool, error) {
		var err error
		findings, err = tal.KubernetesChecks(ctx, []byte(access.Credentials.Kubeconfig), from, run.step.Version, cps, workers)

		return err == nil, err
	}); err != nil {
		return err
	}

	results := make([]upgrade.PreCheck, 0, len(cluster.KubernetesChecks))

	var blocking []string

	for _, name := range cluster.KubernetesChecks {
		res := upgrade.PreCheck{Name: name, Passed: true, Version: run.step.Version}

		var found []string

		for _, f := range findings {
			if f.Check == name {
				found = append(found, strings.TrimPrefix(strings.Join(slices.DeleteFunc([]string{f.Node, f.Component, f.Value}, func(s string) bool { return s == "" }), " "), " "))
			}
		}

		if len(found) > 0 {
			res.Passed, res.Message = false, strings.Join(found, "; ")
		}

		results = append(results, res)
	}

	if err := safe.WriterModify(ctx, run.r, upgrade.NewKubernetesUpgradeStatus(run.cluster), func(res *upgrade.KubernetesUpgradeStatus) error {
		s := res.TypedSpec()
		blocking = nil
		s.PreChecks = slices.DeleteFunc(s.PreChecks, func(p upgrade.PreCheck) bool { return p.Version == run.step.Version })

		for _, r := range results {
			if !r.Passed && slices.Contains(s.SkippedChecks, r.Name) {
				r.Skipped = true
			} else if !r.Passed {
				blocking = append(blocking, r.Name+": "+r.Message)
			}

			s.PreChecks = append(s.PreChecks, r)
		}

		return nil
	}); err != nil {
		return fmt.Errorf("recording pre-check results: %w", err)
	}

	if len(blocking) > 0 {
		return failed("%s (override with --skip-checks NAME)", strings.Join(blocking, "; "))
	}

	return nil
}

// componentsOf are the components whose images a machine pulls: the static pods on a control plane, the kubelet
// on every node.
func componentsOf(images map[string]string) []string {
	var out []string

	for _, c := range []string{talos.KubeAPIServer, talos.KubeControllerManager, talos.KubeScheduler, talos.Kubelet} {
		if images[c] != "" {
			out = append(out, c)
		}
	}

	return out
}

// prePull pulls the hop's images on the machine; a refused pull fails the step naming node and image. Pulls change
// nothing, so a resumed step pulls again.
func (run *kubeStepRun) prePull(ctx context.Context, tal talos.API, node string) error {
	var images map[string]string

	if err := run.until(ctx, "reading the machine config of "+node, func() (bool, error) {
		var err error
		images, err = tal.KubernetesImages(ctx, node)

		return err == nil, err
	}); err != nil {
		return err
	}

	components := componentsOf(images)
	for i, c := range components {
		image := kuberollout.Retag(images[c], run.step.Version)

		if err := run.until(ctx, "pulling "+image+" on "+node, func() (bool, error) {
			err := tal.PullKubernetesImage(ctx, node, image, c != talos.Kubelet)
			if err != nil && !talos.IsUnreachable(err) {
				return false, failed("pulling %s on %s: %v", image, node, err)
			}

			return err == nil, err
		}); err != nil {
			return err
		}

		run.progress(ctx, fmt.Sprintf("%d/%d images", i+1, len(components)))
	}

	return nil
}

// setImage makes the machine config of node name image for component: the one ApplyConfiguration of the step,
// sent only while the config names another image, so a resumed step never sends it again once it took effect.
func (run *kubeStepRun) setImage(ctx context.Context, tal talos.API, node, component string) (string, error) {
	var image string

	err := run.until(ctx, "setting the "+component+" image on "+node, func() (bool, error) {
		images, err := tal.KubernetesImages(ctx, node)
		if err != nil {
			return false, err
		}

		if images[component] == "" {
			return false, failed("the machine config of %s names no %s image", node, component)
		}

		image = kuberollout.Retag(images[component], run.step.Version)

		if _, err = tal.SetKubernetesImage(ctx, node, component, image); err != nil && !talos.IsUnreachable(err) {
			return false, failed("%v", err)
		}

		return err == nil, err
	})

	return image, err
}

// staticPod changes one control-plane component and waits until its mirror pod runs the new image, carries the
// config version Talos rendered it with, and is Ready.
func (run *kubeStepRun) staticPod(ctx context.Context, tal talos.API, k kube.API, node, nodeName string) error {
	component := string(run.step.Kind)

	image, err := run.setImage(ctx, tal, node, component)
	if err != nil {
		return err
	}

	return run.until(ctx, fmt.Sprintf("the %s pod of %s on %s and Ready", component, node, image), func() (bool, error) {
		rendered, version, err := tal.StaticPod(ctx, node, component)
		if err != nil || rendered != image {
			return false, err
		}

		pod, err := k.MirrorPod(ctx, nodeName, component)
		if err != nil {
			return false, err
		}

		return pod.Image == image && pod.Ready && configVersionAtLeast(pod.ConfigVersion, version), nil
	})
}

// configVersionAtLeast compares talos.dev/config-version values, numbers in Talos.
func configVersionAtLeast(have, want string) bool {
	var h, w int

	_, errH := fmt.Sscan(have, &h)
	_, errW := fmt.Sscan(want, &w)

	if errH != nil || errW != nil {
		return have == want
	}

	return h >= w
}

// kubeProxy sets the kube-proxy image in every control plane's config, server-side applies the kube-proxy
// DaemonSet that Talos re-rendered (that object only), and waits for its rollout.
func (run *kubeStepRun) kubeProxy(ctx context.Context, tal talos.API, k kube.API, cps []string) error {
	var image string

	for _, cp := range cps {
		var err error
		if image, err = run.setImage(ctx, tal, cp, talos.KubeProxy); err != nil {
			return err
		}
	}

	if err := run.until(ctx, "applying the kube-proxy DaemonSet", func() (bool, error) {
		object, err := tal.KubeProxyDaemonSet(ctx, cps[0])
		if err != nil {
			return false, err
		}

		if !strings.Contains(string(object), image) {
			return false, fmt.Errorf("the rendered kube-proxy DaemonSet does not run %s yet", image)
		}

		return true, k.ApplyDaemonSet(ctx, object)
	}); err != nil {
		return err
	}

	return run.until(ctx, "the kube-proxy DaemonSet rollout", func() (bool, error) {
		r, err := k.DaemonSetRollout(ctx, "kube-system", "kube-proxy")
		if err != nil {
			return false, err
		}

		run.progress(ctx, fmt.Sprintf("%d/%d pods updated, %d available", r.Updated, r.Desired, r.Available))

		return r.Image == image && r.Complete(), nil
	})
}

// kubelet changes the node's kubelet and waits until the Node reports the new version and Ready; a kubelet restart
// does not evict pods, so there is no drain.
func (run *kubeStepRun) kubelet(ctx context.Context, tal talos.API, k kube.API, node, nodeName string) error {
	if _, err := run.setImage(ctx, tal, node, talos.Kubelet); err != nil {
		return err
	}

	want := "v" + kuberollout.Canonical(run.step.Version)

	return run.until(ctx, "node "+nodeName+" Ready with kubelet "+want, func() (bool, error) {
		n, err := k.Node(ctx, nodeName)
		if err != nil {
			return false, err
		}

		return n.KubeletVersion == want && n.Ready, nil
	})
}
