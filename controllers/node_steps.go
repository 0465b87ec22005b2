package controllers

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/cosi-project/runtime/pkg/controller"
	"github.com/cosi-project/runtime/pkg/safe"
	"go.uber.org/zap"
	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"github.com/upshift-io/upshift/internal/kube"
	"github.com/upshift-io/upshift/internal/rollout"
	"github.com/upshift-io/upshift/internal/talos"
	"github.com/upshift-io/upshift/resources/cluster"
)

// nodeSteps are the side effects a machine's rollout steps share, whichever rollout records them: a Talos upgrade
// (machineRun) and a config change that needs a reboot (configRun) check etcd and forfeit its leadership (control
// planes), cordon, drain, reboot once and wait for the machine to come back, and uncordon by the same rules. Each returns fail, the reason the step fails ("" when it
// succeeded), and an error only when ctx ended (the runtime stops and the step is resumed by the next one).
//
// A nodeSteps is made for one recorded step: its deadlines count from when that step was entered, so they survive
// restarts of the engine.
type nodeSteps struct {
	conn    Connector
	cfg     UpgradeConfig
	r       controller.QRuntime
	logger  *zap.Logger
	id      string
	machine cluster.MachineSpec
	// node is the machine's Kubernetes node.
	node string
	// entered is when the recorded step was entered.
	entered time.Time
	// bootID is the machine's boot ID recorded before its reboot step.
	bootID string
	// waiting is what the recorded step says it waits for.
	waiting string
	// report records why the recorded step waits (its Waiting), so the machine's status shows what the step waits
	// for instead of only the engine's log; it returns an error only when ctx ended.
	report func(ctx context.Context, reason string) error
}

// deadline is when the recorded step, entered at PhaseChangedAt, gives up after d; it survives restarts.
func (ns nodeSteps) deadline(d time.Duration) time.Time { return ns.entered.Add(d) }

func (ns nodeSteps) talos(ctx context.Context) (talos.API, error) {
	access, err := readAccess(ctx, ns.r, ns.machine.Cluster, ns.machine.Endpoint)
	if err != nil {
		return nil, err
	}

	return ns.conn.Talos(ctx, access)
}

// retry runs try until it succeeds or fails for good, waiting the retry delay between tries, until the step timeout.
// try returns the failure of the step for good (fail), or an error worth another try (again).
func (ns nodeSteps) retry(ctx context.Context, what string, try func() (fail string, again error)) (string, error) {
	deadline := ns.deadline(ns.cfg.StepTimeout)
	shown := ns.waiting

	for {
		fail, again := try()

		switch {
		case ctx.Err() != nil:
			return "", ctx.Err()
		case again == nil:
			return fail, nil
		}

		if fail, err := ns.waitOrTimeout(ctx, deadline, what, again, &shown); fail != "" || err != nil {
			return fail, err
		}
	}
}

// talosCall makes an idempotent call, again while the machine is unreachable, until the step timeout.
func (ns nodeSteps) talosCall(ctx context.Context, what string, call func(context.Context, talos.API) error) (string, error) {
	return ns.retry(ctx, what, func() (string, error) { return ns.tryTalos(ctx, what, call) })
}

// tryTalos makes call once: a refusal fails the step; an unreachable machine, or a call not sent because new
// credentials replaced the client, is worth another try.
func (ns nodeSteps) tryTalos(ctx context.Context, what string, call func(context.Context, talos.API) error) (string, error) {
	api, err := ns.talos(ctx)
	if err != nil {
		return "", err
	}

	if err = call(ctx, api); err != nil && !talos.IsUnreachable(err) && !errors.Is(err, ErrClientReplaced) {
		return fmt.Sprintf("%s: %v", what, err), nil
	}

	return "", err
}

// waitOrTimeout waits before the next try of a step, or says it timed out with the last error. While it waits,
// the step's status says why (show), so an unreachable machine is visible, not only logged.
func (ns nodeSteps) waitOrTimeout(ctx context.Context, deadline time.Time, what string, last error, shown *string) (string, error) {
	if !time.Now().Before(deadline) {
		return fmt.Sprintf("%s: %s: %v", ReasonTimeout, what, last), nil
	}

	ns.logger.Debug("machine step waits", zap.String("step", what), zap.Error(last))

	if err := ns.show(ctx, fmt.Sprintf("%s (retrying until %s): %v", what, deadline.UTC().Format(time.RFC3339), last), shown); err != nil {
		return "", err
	}

	return "", sleep(ctx, min(ns.cfg.RetryDelay, time.Until(deadline)+time.Millisecond))
}

// show reports reason as what the step waits for when it differs from the one shown, so a step that keeps waiting
// for the same thing writes its status once, not at every try. Without report nothing is shown.
func (ns nodeSteps) show(ctx context.Context, reason string, shown *string) error {
	if reason == *shown || ns.report == nil {
		return nil
	}

	if err := ns.report(ctx, reason); err != nil {
		return err
	}

	*shown = reason

	return nil
}

// observeReachable observes the machine, waiting while it is unreachable until deadline; the recorded step shows
// that it waits.
func (ns nodeSteps) observeReachable(ctx context.Context, deadline time.Time) (talos.MachineStatus, string, error) {
	shown := ns.waiting

	for {
		st, err := ns.observe(ctx)
		if err == nil {
			return st, "", nil
		}

		if fail, err := ns.waitOrTimeout(ctx, deadline, "observe", err, &shown); fail != "" || err != nil {
			return st, fail, err
		}
	}
}

func (ns nodeSteps) observe(ctx context.Context) (talos.MachineStatus, error) {
	api, err := ns.talos(ctx)
	if err != nil {
		return talos.MachineStatus{}, err
	}

	ctx, cancel := context.WithTimeout(ctx, ns.cfg.ObserveTimeout)
	defer cancel()

	return api.MachineStatus(ctx, ns.id)
}

// rebootingStages are the Talos machine stages of a machine that is going down or replacing its Talos.
var rebootingStages = []string{"rebooting", "upgrading", "installing", "shutting down", "resetting"}

// rebootOnce is a step whose call reboots the machine (Reboot, or the legacy Upgrade). The machine is observed
// before the call: a boot ID other than the one recorded before the step, or a machine already rebooting or
// upgrading, means the call was made before a restart of the engine, and it is not made again. A call that may
// have reached the machine (it became unreachable) is decided the same way once the machine answers again.
func (ns nodeSteps) rebootOnce(ctx context.Context, what string, call func(context.Context, talos.API) error) (string, error) {
	return ns.retry(ctx, what, func() (string, error) {
		st, err := ns.observe(ctx)
		if err != nil {
			return "", err
		}

		if st.BootID != ns.bootID || slices.Contains(rebootingStages, st.Stage) {
			return "", nil
		}

		return ns.tryTalos(ctx, what, call)
	})
}

func (ns nodeSteps) kube(ctx context.Context) (kube.Nodes, error) {
	access, err := readAccess(ctx, ns.r, ns.machine.Cluster, ns.machine.Endpoint)
	if err != nil {
		return nil, err
	}

	return ns.conn.Kubernetes(ctx, access)
}

// kubeCall makes an idempotent call on the machine's node, again while it fails, until the step timeout. Without
// a Kubernetes API (no kubeconfig) or without a node, there is nothing to protect and the step passes.
func (ns nodeSteps) kubeCall(ctx context.Context, what string, call func(context.Context, kube.Nodes) error) (string, error) {
	return ns.retry(ctx, what, func() (string, error) {
		nodes, err := ns.kube(ctx)
		if errors.Is(err, ErrNoKubernetes) {
			ns.logger.Info("no Kubernetes access: step skipped", zap.String("step", what))

			return "", nil
		}

		if err == nil {
			err = call(ctx, nodes)
		}

		if apierrors.IsNotFound(err) {
			return "", nil
		}

		return "", err
	})
}

// drain evicts the node's pods within the cluster's drain timeout, counted from when the step was entered. A drain
// that fails while the Kubernetes API does not answer (its kube-apiserver restarting) is not a failure of the
// drain: the step waits, saying so, and drains again once the API answers, within the same timeout. Evictions go
// through the API, so no PodDisruptionBudget is passed over meanwhile.
func (ns nodeSteps) drain(ctx context.Context) (string, error) {
	timeout := cluster.DefaultDrainTimeout

	if c, err := safe.ReaderGetByID[*cluster.Cluster](ctx, ns.r, ns.machine.Cluster); err == nil {
		if d, err := c.TypedSpec().DrainTimeoutDuration(); err == nil {
			timeout = d
		}
	}

	deadline := ns.deadline(timeout)
	shown := ns.waiting

	for {
		left := time.Until(deadline)
		if left <= 0 {
			return fmt.Sprintf("%s: not finished within %s", ReasonDrain, timeout), nil
		}

		nodes, err := ns.kube(ctx)
		if errors.Is(err, ErrNoKubernetes) {
			return "", nil
		}

		if err == nil {
			err = nodes.Drain(ctx, ns.node, left)
		}

		switch {
		case err == nil, apierrors.IsNotFound(err):
			return "", nil
		case ctx.Err() != nil:
			return "", ctx.Err()
		case nodes == nil || !apiUnreachable(ctx, nodes, ns.node):
			return fmt.Sprintf("%s: %v", ReasonDrain, err), nil
		}

		if fail, err := ns.waitOrTimeout(ctx, deadline, "drain: the Kubernetes API does not answer", err, &shown); fail != "" || err != nil {
			return fail, err
		}
	}
}

// apiUnreachable reports whether the Kubernetes API fails to answer a read of node: a transport error, not an
// answer (any API status, a not found included, means the API is up).
func apiUnreachable(ctx context.Context, nodes kube.Nodes, node string) bool {
	_, err := nodes.Node(ctx, node)

	var status apierrors.APIStatus

	return err != nil && ctx.Err() == nil && !errors.As(err, &status)
}

// cordon marks the node unschedulable.
func (ns nodeSteps) cordon(ctx context.Context) (string, error) {
	return ns.kubeCall(ctx, "cordon", func(ctx context.Context, nodes kube.Nodes) error { return nodes.Cordon(ctx, ns.node) })
}

// uncordon makes the node schedulable again.
func (ns nodeSteps) uncordon(ctx context.Context) (string, error) {
	return ns.kubeCall(ctx, "uncordon", func(ctx context.Context, nodes kube.Nodes) error { return nodes.Uncordon(ctx, ns.node) })
}

// waitBack waits for the machine to come back from its reboot: a boot ID other than bootID, running and ready.
// back judges the machine as soon as it answers with a new boot ID, ready or not: a reason it returns fails the
// step (the machine came back wrong). Not back by the reboot timeout, counted from when the step was entered, is
// a timeout. It returns the machine as it came back.
func (ns nodeSteps) waitBack(ctx context.Context, back func(talos.MachineStatus) string) (talos.MachineStatus, string, error) {
	deadline := ns.deadline(ns.cfg.RebootTimeout)

	for {
		st, err := ns.observe(ctx)
		if err == nil && st.BootID != ns.bootID {
			if fail := back(st); fail != "" {
				return st, fail, nil
			}

			if st.Stage == "running" && st.Ready {
				return st, "", nil
			}

			err = fmt.Errorf("back on %s but %s and not ready yet", st.Version, st.Stage)
		} else if err == nil {
			err = errors.New("not rebooted yet")
		}

		if !time.Now().Before(deadline) {
			return st, fmt.Sprintf("%s: not back within %s: %v", ReasonTimeout, ns.cfg.RebootTimeout, err), nil
		}

		if err := sleep(ctx, min(ns.cfg.RetryDelay, time.Until(deadline)+time.Millisecond)); err != nil {
			return st, "", err
		}
	}
}

// waitEtcdGate is the CheckingEtcd step: it waits, without a timeout, until etcd may lose this control plane's
// member (rollout.ControlPlaneMayLeave, observed afresh through the control planes). While it may not, the reason
// is shown in the step's status (show), so the cluster shows why it waits.
func (ns nodeSteps) waitEtcdGate(ctx context.Context) (string, error) {
	shown := ns.waiting

	for {
		ok, reason := ns.etcdGate(ctx)
		if ok {
			return "", nil
		}

		if err := ns.show(ctx, reason, &shown); err != nil {
			return "", err
		}

		if err := sleep(ctx, ns.cfg.RetryDelay); err != nil {
			return "", err
		}
	}
}

func (ns nodeSteps) etcdGate(ctx context.Context) (bool, string) {
	cps, _, err := controlPlanes(ctx, ns.r, ns.machine.Cluster)
	if err != nil {
		return false, err.Error()
	}

	api, err := ns.talos(ctx)
	if err != nil {
		return false, err.Error()
	}

	ctx, cancel := context.WithTimeout(ctx, ns.cfg.ObserveTimeout)
	defer cancel()

	etcd := observeEtcd(ctx, api, cps)

	return rollout.ControlPlaneMayLeave(&etcd, ns.id)
}

// forfeitLeadership is the ForfeitingLeadership step: the member hands etcd leadership on before its machine
// reboots, so leadership moves once and on purpose. A lone control plane keeps it: there is nobody to hand it to.
func (ns nodeSteps) forfeitLeadership(ctx context.Context) (string, error) {
	if cps, _, err := controlPlanes(ctx, ns.r, ns.machine.Cluster); err == nil && len(cps) < 2 {
		return "", nil
	}

	return ns.talosCall(ctx, "forfeit etcd leadership", func(ctx context.Context, api talos.API) error { return api.EtcdForfeitLeadership(ctx, ns.id) })
}
