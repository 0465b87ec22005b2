package demoview

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/upshift-io/upshift/resources/manifest"
	"github.com/upshift-io/upshift/resources/upgrade"
)

// The Kubernetes track of a cluster: the engine's KubernetesUpgradeStatus, shown once it has steps (before the
// demo asks for a new version the status is Done with nothing to do, which is no news). Everything it shows, the
// timings of the summary too, comes from the status itself: every step carries when it started and finished.

func (v *View) updateKubernetes(id string, spec upgrade.KubernetesUpgradeStatusSpec, at time.Time) []string {
	c := v.cluster(id)
	c.kube = &spec

	if !kubeShown(&spec) {
		return nil
	}

	line := c.id + " " + kubeHeadline(&spec)

	switch now := kubeNow(&spec); {
	case spec.Error != "":
		line += "  " + spec.Error
	case now != "":
		line += "  " + now
	case spec.Reason != "" && spec.Phase != upgrade.PhaseDone:
		line += "  (" + spec.Reason + ")"
	}

	return c.changed(&c.kubeLine, line, v.since(at))
}

func (v *View) updateManifests(id string, spec manifest.ManifestSyncSpec) {
	v.cluster(id).sync = &spec
}

// kubeShown reports whether a Kubernetes upgrade status is worth a track: it has steps, or says why it has none.
func kubeShown(s *upgrade.KubernetesUpgradeStatusSpec) bool {
	return s != nil && (len(s.Steps) > 0 || s.Phase == upgrade.PhaseBlocked || s.Phase == upgrade.PhaseFailed)
}

// kubeHeadline is a Kubernetes upgrade's phase, versions, hop and count of steps, e.g.
// "Kubernetes Upgrading  v1.34.3 → v1.35.2  7/23 steps".
func kubeHeadline(s *upgrade.KubernetesUpgradeStatusSpec) string {
	line := "Kubernetes " + string(s.Phase)

	if s.FromVersion != "" {
		line += "  " + s.FromVersion + " → " + s.ToVersion
	} else if s.ToVersion != "" {
		line += "  → " + s.ToVersion
	}

	if cur, ok := currentStep(s); ok && len(s.Plan) > 1 {
		line += fmt.Sprintf("  hop %d/%d", slices.Index(s.Plan, cur.Version)+1, len(s.Plan))
	}

	if s.Total > 0 {
		line += fmt.Sprintf("  %d/%d steps", s.Done, s.Total)
	}

	return line
}

// stageStaticPods is the stage of a control plane's three static pods.
const stageStaticPods = "static pods"

// stageOf groups step kinds as a user follows them: the three static pods of a control plane are one stage.
func stageOf(k upgrade.StepKind) string {
	switch k {
	case upgrade.StepAPIServer, upgrade.StepControllerManager, upgrade.StepScheduler:
		return stageStaticPods
	case upgrade.StepKubelet:
		return "kubelets"
	case upgrade.StepPreChecks, upgrade.StepPrePull, upgrade.StepKubeProxy:
	}

	return string(k)
}

// currentStep is the first unfinished step, the one the upgrade is at.
func currentStep(s *upgrade.KubernetesUpgradeStatusSpec) (upgrade.KubernetesUpgradeStep, bool) {
	i := slices.IndexFunc(s.Steps, func(st upgrade.KubernetesUpgradeStep) bool { return !st.State.Finished() })
	if i < 0 {
		return upgrade.KubernetesUpgradeStep{}, false
	}

	return s.Steps[i], true
}

// kubeNow says where a running Kubernetes upgrade is: the stage of its current step, how many steps of that stage
// (in this hop) are done, and what runs, e.g. "static pods 4/9: kube-apiserver on c1-cp-2" or
// "kube-proxy 0/1: 3/6 pods updated, 2 available". Empty once every step finished.
func kubeNow(s *upgrade.KubernetesUpgradeStatusSpec) string {
	cur, ok := currentStep(s)
	if !ok || s.Phase == upgrade.PhaseDone {
		return ""
	}

	stage := stageOf(cur.Kind)
	done, total := 0, 0

	var running []string

	for _, st := range s.Steps {
		if st.Version != cur.Version || stageOf(st.Kind) != stage {
			continue
		}

		total++

		if st.State.Finished() {
			done++
		}

		if st.State != upgrade.StepRunning {
			continue
		}

		what := st.Machine
		if stage == stageStaticPods {
			what = string(st.Kind) + " on " + st.Machine
		}

		if st.Progress != "" {
			what = strings.TrimSpace(what + " " + st.Progress)
		}

		if what != "" {
			running = append(running, what)
		}
	}

	line := fmt.Sprintf("%s %d/%d", stage, done, total)
	if len(running) > 0 {
		line += ": " + strings.Join(running, ", ")
	}

	return line
}

// kubeScreen is the Kubernetes track under a cluster's Talos lines: the headline, then what runs now, the error or
// what it waits for.
func kubeScreen(s *upgrade.KubernetesUpgradeStatusSpec, width int) []string {
	if !kubeShown(s) {
		return nil
	}

	lines := []string{"  " + kubeHeadline(s)}

	switch now := kubeNow(s); {
	case s.Error != "":
		lines = append(lines, wrap("  ✗ "+s.Error, "    ", width, 3)...)
	case now != "":
		lines = append(lines, "  now   "+now)
	case s.Reason != "" && s.Phase != upgrade.PhaseDone:
		lines = append(lines, "  "+s.Reason)
	}

	return lines
}

// kubeStepOn is the running Kubernetes step on a machine, for its row: the kind without "kube-"
// ("controller-manager", "kubelet", "pre-pull"), short enough for an 80-column row; empty when none.
func kubeStepOn(s *upgrade.KubernetesUpgradeStatusSpec, machine string) string {
	if s == nil {
		return ""
	}

	for _, st := range s.Steps {
		if st.State == upgrade.StepRunning && st.Machine == machine {
			return strings.TrimPrefix(string(st.Kind), "kube-")
		}
	}

	return ""
}

// StepTime is the time the steps of one kind took in a Kubernetes upgrade: how many ran, their mean and longest
// time, and the wall time from the first start to the last finish (pre-pulls and worker kubelets run side by side).
type StepTime struct {
	Kind    upgrade.StepKind
	Count   int
	Total   time.Duration
	Longest time.Duration
	Wall    time.Duration
}

// Average is the mean time of one step of the kind.
func (s StepTime) Average() time.Duration {
	if s.Count == 0 {
		return 0
	}

	return s.Total / time.Duration(s.Count)
}

// kubeTimes sums the finished steps of a Kubernetes upgrade by kind, in the order the kinds first run, and
// returns the whole upgrade's span (first start to last finish).
func kubeTimes(s *upgrade.KubernetesUpgradeStatusSpec) ([]StepTime, time.Duration) {
	var (
		out         []StepTime
		first, last time.Time
		spans       = map[upgrade.StepKind][2]time.Time{}
	)

	for _, st := range s.Steps {
		if st.StartedAt.IsZero() || st.FinishedAt.IsZero() || st.State != upgrade.StepDone {
			continue
		}

		i := slices.IndexFunc(out, func(t StepTime) bool { return t.Kind == st.Kind })
		if i < 0 {
			out = append(out, StepTime{Kind: st.Kind})
			i = len(out) - 1
		}

		d := st.FinishedAt.Sub(st.StartedAt)
		out[i].Count++
		out[i].Total += d
		out[i].Longest = max(out[i].Longest, d)

		span, ok := spans[st.Kind]
		if !ok || st.StartedAt.Before(span[0]) {
			span[0] = st.StartedAt
		}

		if st.FinishedAt.After(span[1]) {
			span[1] = st.FinishedAt
		}

		spans[st.Kind] = span

		if first.IsZero() || st.StartedAt.Before(first) {
			first = st.StartedAt
		}

		if st.FinishedAt.After(last) {
			last = st.FinishedAt
		}
	}

	for i := range out {
		out[i].Wall = spans[out[i].Kind][1].Sub(spans[out[i].Kind][0])
	}

	return out, last.Sub(first)
}

// kubeFinished is when the last step of a Done Kubernetes upgrade finished; zero while it is not Done.
func kubeFinished(s *upgrade.KubernetesUpgradeStatusSpec) time.Time {
	var last time.Time

	if s == nil || s.Phase != upgrade.PhaseDone {
		return last
	}

	for _, st := range s.Steps {
		if st.FinishedAt.After(last) {
			last = st.FinishedAt
		}
	}

	return last
}

// kubeSummary is the Kubernetes part of a cluster's summary: the outcome and its time, the plan, and the time per
// step kind.
func kubeSummary(s *upgrade.KubernetesUpgradeStatusSpec, width int) []string {
	if !kubeShown(s) {
		return nil
	}

	times, span := kubeTimes(s)

	head := "  Kubernetes upgrade: " + string(s.Phase)
	if s.Phase == upgrade.PhaseDone && span > 0 {
		head += " in " + round(span).String()
	}

	lines := []string{head}

	if len(s.Plan) > 0 {
		lines = append(lines, "  plan  "+orUnknown(s.FromVersion)+" ⇒ "+strings.Join(s.Plan, " → "))
	}

	if s.Error != "" {
		lines = append(lines, wrap("  ✗ "+s.Error, "    ", width, 3)...)
	}

	if len(times) == 0 {
		return lines
	}

	row := "  %-23s %5s %9s %9s %9s"
	lines = append(lines, fmt.Sprintf(row, "STEP", "TIMES", "AVERAGE", "LONGEST", "WALL"))

	for _, t := range times {
		lines = append(lines, fmt.Sprintf(row, t.Kind, fmt.Sprint(t.Count), round(t.Average()), round(t.Longest), round(t.Wall)))
	}

	return lines
}

// KubernetesUpgrade returns a copy of the cluster's Kubernetes upgrade status as last seen, and whether there was
// one.
func (v *View) KubernetesUpgrade(clusterID string) (upgrade.KubernetesUpgradeStatusSpec, bool) {
	c, ok := v.clusters[clusterID]
	if !ok || c.kube == nil {
		return upgrade.KubernetesUpgradeStatusSpec{}, false
	}

	return c.kube.DeepCopy(), true
}

// ManifestsAfterUpgrades returns the cluster's bootstrap-manifest diff once the engine computed it after the
// cluster's upgrades finished (the Talos rollout, and the Kubernetes upgrade when it has one): a diff checked
// before then may miss what the last upgrade changed in the rendered manifests.
func (v *View) ManifestsAfterUpgrades(clusterID string) (manifest.ManifestSyncSpec, bool) {
	c, ok := v.clusters[clusterID]
	if !ok || c.sync == nil || c.finished.IsZero() {
		return manifest.ManifestSyncSpec{}, false
	}

	finished := c.finished

	if kubeShown(c.kube) {
		finished = kubeFinished(c.kube)
		if finished.IsZero() {
			return manifest.ManifestSyncSpec{}, false
		}
	}

	if c.sync.CheckedAt.Before(finished) || c.sync.Phase == manifest.PhaseApplying {
		return manifest.ManifestSyncSpec{}, false
	}

	return c.sync.DeepCopy(), true
}

// offKubernetes says why the cluster's Kubernetes upgrade did not end Done on version; nil when it did.
func (v *View) offKubernetes(clusterID, version string) error {
	s, ok := v.KubernetesUpgrade(clusterID)

	switch {
	case !ok:
		return fmt.Errorf("cluster %s has no Kubernetes upgrade", clusterID)
	case s.Phase != upgrade.PhaseDone || strings.TrimPrefix(s.ToVersion, "v") != strings.TrimPrefix(version, "v"):
		return fmt.Errorf("the Kubernetes upgrade of %s is %s toward %s, not Done on %s", clusterID, s.Phase, s.ToVersion, version)
	}

	return nil
}

// maxManifestObjects is how many of the objects that differ the closing lines name; the diff command shows all.
const maxManifestObjects = 5

// manifestsLines say how the cluster's bootstrap manifests stand after its upgrades, in the engine's words
// (ManifestSyncSpec.Summary, as `upshift status` says it), wrapped at width, then name the objects that differ;
// nothing when the engine has not computed the diff since the upgrades finished.
func (v *View) manifestsLines(clusterID string, width int) []string {
	s, ok := v.ManifestsAfterUpgrades(clusterID)
	if !ok {
		return nil
	}

	lines := wrapWords(clusterID+" "+s.Summary(clusterID), "  ", width)

	for i, d := range s.Diffs {
		if i == maxManifestObjects {
			lines = append(lines, fmt.Sprintf("  … %d more", len(s.Diffs)-i))

			break
		}

		var what []string

		for _, part := range []struct {
			word string
			on   bool
		}{{d.Action, d.Action != ""}, {"conflicts", len(d.Conflicts) > 0}, {"refused", d.Refused != ""}} {
			if part.on {
				what = append(what, part.word)
			}
		}

		lines = append(lines, cut("  "+d.Object+" ("+strings.Join(what, ", ")+")", width))
	}

	return lines
}

// wrapWords breaks s at spaces into lines of at most width columns, the following ones indented; a word longer
// than a line is cut. No limit below 1.
func wrapWords(s, indent string, width int) []string {
	if width < 1 {
		return []string{s}
	}

	var (
		lines []string
		line  string
	)

	for _, word := range strings.Fields(s) {
		switch {
		case line == "":
			line = word
		case len([]rune(line))+1+len([]rune(word)) <= width:
			line += " " + word
		default:
			lines = append(lines, cut(line, width))
			line = indent + word
		}
	}

	return append(lines, cut(line, width))
}
