package talosemu

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"sync"
	"time"
)

// Journal events that are not gRPC calls.
const (
	// EventRebootDown is recorded when a node goes down for a reboot.
	EventRebootDown = "reboot-down"
	// EventRebootUp is recorded when a node is back up after a reboot.
	EventRebootUp = "reboot-up"
	// EventInstalled is recorded when an install finished and its version is staged for the next reboot.
	EventInstalled = "installed"
	// EventInstallFailed is recorded when an install failed (bad image, incompatible version, injected fault).
	EventInstallFailed = "install-failed"
	// EventRolledBack is recorded when a node came back on its old version instead of the staged one.
	EventRolledBack = "rolled-back"
	// EventEtcdWiped is recorded when a node's etcd data was wiped and its member left the cluster.
	EventEtcdWiped = "etcd-wiped"
	// EventEtcdJoined is recorded when a node's etcd member (re)joined the cluster as a new member.
	EventEtcdJoined = "etcd-joined"
	// EventAPIServerDown is recorded when a control plane's kube-apiserver static pod restarts (its config changed):
	// the cluster's API endpoint is unreachable from then on until EventAPIServerUp.
	EventAPIServerDown = "apiserver-down"
	// EventAPIServerUp is recorded when the cluster's API endpoint serves again after EventAPIServerDown.
	EventAPIServerUp = "apiserver-up"
)

// ImageChange is a Kubernetes component whose image an ApplyConfiguration changes, so the journal shows which step
// of a Kubernetes upgrade a call is (and a call sent twice shows no change the second time).
type ImageChange struct {
	// Component is kube-apiserver, kube-controller-manager, kube-scheduler, kube-proxy or kubelet.
	Component string `json:"component"`
	From      string `json:"from"`
	To        string `json:"to"`
}

// Entry is one journal record: a gRPC call a node received, or an event in a node's life (see the Event constants).
type Entry struct {
	Time   time.Time `json:"time"`
	Node   string    `json:"node"`
	Method string    `json:"method,omitempty"`
	Event  string    `json:"event,omitempty"`

	// Arguments that matter, depending on the method or event.
	Image    string `json:"image,omitempty"`
	Preserve *bool  `json:"preserve,omitempty"`
	Stage    *bool  `json:"stage,omitempty"`
	Force    *bool  `json:"force,omitempty"`
	Mode     string `json:"mode,omitempty"`
	DryRun   *bool  `json:"dryRun,omitempty"`
	MemberID string `json:"memberId,omitempty"`
	Path     string `json:"path,omitempty"`
	Resource string `json:"resource,omitempty"`
	Version  string `json:"version,omitempty"`
	BootID   string `json:"bootId,omitempty"`
	Error    string `json:"error,omitempty"`
	// Namespace is the COSI namespace of a resource call, or the containerd namespace of an image pull (NS_CRI,
	// NS_SYSTEM).
	Namespace string `json:"namespace,omitempty"`
	// Changes are the component images an ApplyConfiguration changes, against the node's active config.
	Changes []ImageChange `json:"changes,omitempty"`
}

// Journal records every call and reboot of a fleet in order, in memory for the Go API and as JSON lines in a file.
type Journal struct {
	mu      sync.Mutex
	entries []Entry
	changed chan struct{}
	out     io.Writer
	err     error
}

func newJournal(out io.Writer) *Journal {
	return &Journal{out: out, changed: make(chan struct{})}
}

// record appends an entry, stamping its time, and wakes up waiters.
func (j *Journal) record(e Entry) {
	j.mu.Lock()
	defer j.mu.Unlock()

	e.Time = time.Now()
	j.entries = append(j.entries, e)

	if j.out != nil && j.err == nil {
		line, err := json.Marshal(e)
		if err == nil {
			_, err = j.out.Write(append(line, '\n'))
		}

		if err != nil {
			j.err = fmt.Errorf("writing journal: %w", err)
		}
	}

	close(j.changed)
	j.changed = make(chan struct{})
}

// Entries returns a copy of every entry recorded so far, oldest first.
func (j *Journal) Entries() []Entry {
	j.mu.Lock()
	defer j.mu.Unlock()

	return slices.Clone(j.entries)
}

// Err reports the first error writing the journal file, so a test or the CLI can tell that the file is incomplete.
func (j *Journal) Err() error {
	j.mu.Lock()
	defer j.mu.Unlock()

	return j.err
}

// Wait blocks until an entry matching match has been recorded (including entries recorded before the call) and
// returns the first one, or fails when ctx ends.
func (j *Journal) Wait(ctx context.Context, match func(Entry) bool) (Entry, error) {
	seen := 0

	for {
		j.mu.Lock()
		fresh := j.entries[seen:]
		seen = len(j.entries)
		changed := j.changed
		j.mu.Unlock()

		for _, e := range fresh {
			if match(e) {
				return e, nil
			}
		}

		select {
		case <-ctx.Done():
			return Entry{}, fmt.Errorf("waiting for journal entry: %w", ctx.Err())
		case <-changed:
		}
	}
}

// MatchEvent matches an entry of the given event for the given node.
func MatchEvent(node, event string) func(Entry) bool {
	return func(e Entry) bool { return e.Node == node && e.Event == event }
}

// MatchMethod matches a call of the given full gRPC method name to the given node.
func MatchMethod(node, method string) func(Entry) bool {
	return func(e Entry) bool { return e.Node == node && e.Method == method }
}
