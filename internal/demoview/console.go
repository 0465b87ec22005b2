package demoview

import (
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/cosi-project/runtime/pkg/resource"
	"golang.org/x/term"
)

// Console is where a demo run shows itself. On a terminal the live view redraws in place, with the notes below it
// (what happened besides the view, such as a failure dealt with); elsewhere (CI, a pipe, or when asked for plain
// output) every change is a line of its own, so a log reads as a transcript. The View it draws stays pure; the
// Console is the one part that writes, so the demo's command only drives the run.
type Console struct {
	out      io.Writer
	terminal *terminal // nil: plain lines
	view     *View
	start    time.Time
	endpoint string
	// notes are shown for good; held are shown until dropped, by key (an open incident of a cluster).
	notes []string
	held  map[string][]string
}

// NewConsole returns the console of a demo that started at start and writes to out: a live view when out is a
// terminal and plain is false, plain lines otherwise.
func NewConsole(out io.Writer, plain bool, start time.Time) *Console {
	c := &Console{out: out, view: New(start), start: start, held: map[string][]string{}}

	if f, ok := out.(*os.File); ok && !plain && term.IsTerminal(int(f.Fd())) {
		c.terminal = &terminal{w: out, fd: int(f.Fd())}
	}

	return c
}

// View is what the console shows; the demo asks it how the upgrades stand.
func (c *Console) View() *View { return c.view }

// Printf writes a line (or several) of the demo's own between or above the live view.
func (c *Console) Printf(format string, args ...any) {
	fmt.Fprintf(c.out, format, args...)
}

// Starting says what the demo starts before it starts it, since the fleet takes a while to come up.
func (c *Console) Starting(clusters, workers int, talos, logPath string) {
	c.Printf("upshift demo: starting the engine and an emulated fleet\n"+
		"  clusters: %d, each 3 control planes and %d workers on Talos %s\n"+
		"            (real etcd members, a real kube-apiserver per cluster)\n"+
		"  log:      %s\n",
		clusters, workers, strings.TrimPrefix(talos, "v"), logPath)
}

// Intro is where a started demo's engine and fleet can be reached.
type Intro struct {
	// Endpoint is the engine's gRPC API.
	Endpoint string
	// StateFile is the engine's state and event log.
	StateFile string
	// TalosEndpoint is the emulated fleet's Talos API.
	TalosEndpoint string
	// Talosconfig is the fleet's talosconfig.
	Talosconfig string
	// Config is the admin client config the engine wrote (it names the endpoint), for the commands the demo shows.
	Config string
}

// Introduce says where the engine and the fleet can be reached, so a user can follow the run from another
// terminal; the live view's header names the engine from then on.
func (c *Console) Introduce(i Intro) {
	c.endpoint = i.Endpoint
	c.Printf("\nengine:  %s\n  state and event log: %s\n", i.Endpoint, i.StateFile)
	c.Printf("fleet:   Talos API %s\n  talosconfig: %s\n", i.TalosEndpoint, i.Talosconfig)
	c.Printf("Follow it from another terminal:\n  %s\n  upshift get machineupgradestatuses -w\n\n", exportConfig(i.Config))
}

// Requested says that the demo asked for the Talos upgrade of a cluster, and which command does the same.
func (c *Console) Requested(clusterID, version string) {
	c.Printf("requested: %s to Talos %s, as `upshift upgrade talos %s --to %s` does\n", clusterID, version, clusterID, version)
}

// Update folds a created or updated resource into the view; in plain mode it prints the lines its change makes at
// once (a terminal shows the change at the next Redraw).
func (c *Console) Update(r resource.Resource) {
	lines := c.view.Update(r)
	if c.terminal != nil {
		return
	}

	for _, l := range lines {
		c.Printf("%s\n", l)
	}
}

// Note shows lines below the live view: for good when key is empty, else until Drop(key), so the notes of an
// incident go once it is over. In plain mode it prints them at once.
func (c *Console) Note(key string, lines ...string) {
	switch {
	case c.terminal == nil:
		for _, l := range lines {
			c.Printf("%9s %s\n", "", l)
		}
	case key != "":
		c.held[key] = append(c.held[key], lines...)
	default:
		c.notes = append(c.notes, lines...)
	}
}

// Drop removes the notes held under key.
func (c *Console) Drop(key string) { delete(c.held, key) }

// HideCursor hides a terminal's cursor while the view redraws, so it does not flicker over the rows.
func (c *Console) HideCursor() { c.terminal.hideCursor() }

// ShowCursor gives a terminal its cursor back.
func (c *Console) ShowCursor() { c.terminal.showCursor() }

// Redraw draws the live view in place with the notes below it, fitted to the terminal (the last notes when they
// would take more than a third of it). In plain mode it does nothing: the lines went out as they came.
func (c *Console) Redraw() {
	if c.terminal == nil {
		return
	}

	width, height := c.terminal.size()
	header := fmt.Sprintf("upshift demo  %s  engine %s", time.Since(c.start).Round(time.Second), c.endpoint)
	notes := slices.Clone(c.notes)

	for _, key := range slices.Sorted(maps.Keys(c.held)) {
		notes = append(notes, c.held[key]...)
	}

	if len(notes) > height/3 {
		notes = notes[len(notes)-height/3:]
	}

	frame := append([]string{header}, c.view.Screen(width, height-len(notes)-2)...)

	frame = append(frame, notes...)
	c.terminal.draw(frame, width)
}

// Closing is what the summary at the end of a demo points at.
type Closing struct {
	// Clusters are the demo's clusters, in the order the mismatches are checked.
	Clusters []string
	// Target is the Talos version every machine should run.
	Target string
	// Kubernetes is the Kubernetes version the demo asked for after the Talos rollout; empty when it asked for none.
	Kubernetes string
	// Endpoint is the engine's gRPC API.
	Endpoint string
	// Config is the admin client config the engine wrote (it names the endpoint, also after a new serve on its data dir).
	Config string
	// EngineDir is the engine's data directory, StateFile its state and event log in it.
	EngineDir, StateFile string
	// Keep says that the engine keeps serving after the summary.
	Keep bool
}

// Finish prints the summary of the run and where to look deeper, and returns err or, when some machine is not on
// the target or the Kubernetes upgrade did not end Done on its version, why not. It ends with the bootstrap
// manifests the engine found out of sync after the upgrades.
func (c *Console) Finish(cl Closing, err error) error {
	width := 80
	if c.terminal != nil {
		width, _ = c.terminal.size()
	}

	c.Printf("\n%s\n", strings.Join(c.view.Summary(width), "\n"))

	for _, id := range cl.Clusters {
		if err == nil {
			err = c.view.offVersion(id, cl.Target)
		}

		if err == nil && cl.Kubernetes != "" {
			err = c.view.offKubernetes(id, cl.Kubernetes)
		}
	}

	// The history of a machine that failed tells the most; else the first control plane's.
	machine := cl.Clusters[0] + "-cp-1"
	if failed := c.view.Failed(cl.Clusters[0]); len(failed) > 0 {
		machine = failed[0]
	}

	c.Printf("\nEvent log (every transition above, with its time and writer):\n  %s\n", cl.StateFile)

	if cl.Keep {
		c.Printf("Look deeper, from another terminal, while the engine serves (until Ctrl-C):\n")
	} else {
		c.Printf("Look deeper: the engine stopped with the demo (--keep keeps it up).\n"+
			"Serve its state again:\n  upshift serve --data-dir %s\nand, from another terminal:\n", cl.EngineDir)
	}

	c.Printf("  %s\n", exportConfig(cl.Config))

	commands := []string{
		"history machineupgradestatus " + machine,
		"get machineupgradestatuses",
		"get talosupgradestatus " + cl.Clusters[0] + " -o yaml",
	}

	if cl.Kubernetes != "" {
		commands = append(commands, "get kubernetesupgradestatus "+cl.Clusters[0]+" -o yaml")
	}

	for _, command := range append(commands, "status "+cl.Clusters[0]) {
		c.Printf("  upshift %s\n", command)
	}

	if err != nil {
		return err
	}

	if cl.Kubernetes != "" {
		c.Printf("\nEvery machine runs Talos %s and Kubernetes %s.\n", cl.Target, cl.Kubernetes)
	} else {
		c.Printf("\nEvery machine runs Talos %s.\n", cl.Target)
	}

	// Last, what the upgrades left to the user: the bootstrap objects that now differ from what Talos renders.
	for _, id := range cl.Clusters {
		for _, l := range c.view.manifestsLines(id, width) {
			c.Printf("%s\n", l)
		}
	}

	return nil
}

// KeepServing says that the engine and the fleet stay up after the summary, and how to stop them.
func (c *Console) KeepServing() {
	c.Printf("\nThe engine keeps serving on %s and the fleet keeps running: Ctrl-C stops both.\n", c.endpoint)
}

// exportConfig points the client commands of the shell at the engine's admin config, which names its endpoint.
func exportConfig(config string) string { return "export UPSHIFT_CONFIG=" + config }

// terminal redraws a frame of lines in place with ANSI cursor movements.
type terminal struct {
	w     io.Writer
	fd    int
	lines int // of the last frame
}

// size is the terminal's width and height, 80x24 when unknown.
func (t *terminal) size() (width, height int) {
	width, height, err := term.GetSize(t.fd)
	if err != nil || width < 1 || height < 1 {
		return 80, 24
	}

	return width, height
}

func (t *terminal) draw(frame []string, width int) {
	var b strings.Builder

	if t.lines > 0 {
		fmt.Fprintf(&b, "\x1b[%dA", t.lines)
	}

	for _, l := range frame {
		b.WriteString("\r\x1b[2K")
		b.WriteString(cut(l, width-1))
		b.WriteString("\n")
	}

	b.WriteString("\x1b[J")
	t.lines = len(frame)

	_, _ = io.WriteString(t.w, b.String()) //nolint:errcheck // a terminal that fails us has no one to tell
}

func (t *terminal) hideCursor() {
	if t != nil {
		_, _ = io.WriteString(t.w, "\x1b[?25l") //nolint:errcheck // cosmetic
	}
}

func (t *terminal) showCursor() {
	if t != nil {
		_, _ = io.WriteString(t.w, "\x1b[?25h") //nolint:errcheck // cosmetic
	}
}
