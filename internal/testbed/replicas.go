package testbed

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/cosi-project/runtime/pkg/state"

	"github.com/upshift-io/upshift"
	"github.com/upshift-io/upshift/internal/etcdcluster"
	"github.com/upshift-io/upshift/internal/talosemu"
	"github.com/upshift-io/upshift/state/server"
)

// ReplicaSet is an emulated fleet managed by several engine replicas, child processes that share their state in a
// real etcd cluster of embedded members: one leads and runs the controllers, every one serves the API.
type ReplicaSet struct {
	// Fleet is the emulated fleet.
	Fleet *talosemu.Fleet
	// Etcd is the etcd cluster holding the state.
	Etcd *etcdcluster.Cluster

	dir       string
	leaseTTL  time.Duration
	command   Command
	procs     []*process
	endpoints []string
	clients   []*server.Client
}

// StartReplicas starts an etcd cluster of etcdMembers members, replicas engine replicas run by command (SelfCommand)
// with leases of leaseTTL, and the fleet, and registers the fleet. Close stops them all.
func StartReplicas(ctx context.Context, dir string, etcdMembers, replicas int, leaseTTL time.Duration, command Command, fleetOptions ...talosemu.Option) (*ReplicaSet, error) {
	etcd, err := etcdcluster.Start(filepath.Join(dir, "etcd"), etcdMembers, nil)
	if err != nil {
		return nil, err
	}

	fleet, err := talosemu.New(ctx, append([]talosemu.Option{talosemu.WithStateDir(filepath.Join(dir, "fleet")), talosemu.WithLite()}, fleetOptions...)...)
	if err != nil {
		return nil, errors.Join(fmt.Errorf("starting the emulated fleet: %w", err), etcd.Close())
	}

	r := &ReplicaSet{Fleet: fleet, Etcd: etcd, dir: dir, leaseTTL: leaseTTL, command: command,
		procs: make([]*process, replicas), endpoints: make([]string, replicas), clients: make([]*server.Client, replicas)}

	for i := range replicas {
		if i > 0 {
			// Every replica has the first one's encryption key and CA, so one admin config reaches them all.
			if err = shareSecrets(r.replicaDir(0), r.replicaDir(i)); err != nil {
				return nil, errors.Join(err, r.Close())
			}
		}

		if err = r.StartReplica(ctx, i); err != nil {
			return nil, errors.Join(err, r.Close())
		}
	}

	if err = Register(ctx, r.State(0), fleet); err != nil {
		return nil, errors.Join(err, r.Close())
	}

	return r, nil
}

// shareSecrets copies the files every replica must share from one data dir to another.
func shareSecrets(from, to string) error {
	if err := os.MkdirAll(to, 0o700); err != nil {
		return err
	}

	for _, name := range []string{upshift.KeyFileName, "ca.crt", "ca.key"} {
		data, err := os.ReadFile(filepath.Join(from, name))
		if err != nil {
			return fmt.Errorf("sharing the first replica's %s: %w", name, err)
		}

		if err = os.WriteFile(filepath.Join(to, name), data, 0o600); err != nil {
			return fmt.Errorf("sharing the first replica's %s: %w", name, err)
		}
	}

	return nil
}

func (r *ReplicaSet) replicaDir(i int) string {
	return filepath.Join(r.dir, fmt.Sprintf("replica-%d", i), "engine")
}

// ReplicaName is replica i's name in the election.
func ReplicaName(i int) string { return fmt.Sprintf("replica-%d", i) }

// StartReplica starts replica i (again) on its data dir and address.
func (r *ReplicaSet) StartReplica(ctx context.Context, i int) error {
	if r.procs[i] != nil {
		return fmt.Errorf("testbed: replica %d is running", i)
	}

	listen := r.endpoints[i]
	if listen == "" {
		listen = "127.0.0.1:0"
	}

	spec := strings.Join(r.Etcd.Endpoints(), ",") + "\n" + ReplicaName(i) + "\n" + r.leaseTTL.String()
	command := func(dataDir, listen string) *exec.Cmd {
		cmd := r.command(dataDir, listen)
		cmd.Env = append(cmd.Env, etcdEnv+"="+spec)

		return cmd
	}

	p, err := startProcess(ctx, command, r.replicaDir(i), listen)
	if err != nil {
		return fmt.Errorf("starting replica %d: %w", i, err)
	}

	r.procs[i] = p

	if r.endpoints[i] == "" {
		r.endpoints[i] = p.addr()
	}

	if r.clients[i] == nil {
		if r.clients[i], err = r.Dial(i); err != nil {
			return err
		}
	}

	return nil
}

// Dial connects to replica i's API as the admin; the caller closes the client.
func (r *ReplicaSet) Dial(i int) (*server.Client, error) {
	cfg, err := server.LoadClientConfig(r.ConfigPath())
	if err != nil {
		return nil, fmt.Errorf("connecting to replica %d: %w", i, err)
	}

	c, err := server.Dial(r.endpoints[i], cfg)
	if err != nil {
		return nil, fmt.Errorf("connecting to replica %d: %w", i, err)
	}

	return c, nil
}

// ConfigPath is the admin client config, valid for every replica (they share the CA).
func (r *ReplicaSet) ConfigPath() string {
	return filepath.Join(r.replicaDir(0), upshift.AdminConfigFileName)
}

// Endpoint is replica i's API address; it stays the same across restarts.
func (r *ReplicaSet) Endpoint(i int) string { return r.endpoints[i] }

// Replicas is how many replicas the set has.
func (r *ReplicaSet) Replicas() int { return len(r.procs) }

// State is replica i's state through its API (the client reconnects after a restart).
func (r *ReplicaSet) State(i int) state.State { return r.clients[i].State() }

// Client is the API client of replica i.
func (r *ReplicaSet) Client(i int) *server.Client { return r.clients[i] }

// Kill kills replica i with SIGKILL.
func (r *ReplicaSet) Kill(i int) error {
	if r.procs[i] == nil {
		return nil
	}

	err := r.procs[i].stop()
	r.procs[i] = nil

	return err
}

// Stop stops replica i gracefully (SIGTERM), as an operator does, and waits until it exited.
func (r *ReplicaSet) Stop(i int) error {
	if r.procs[i] == nil {
		return nil
	}

	p := r.procs[i]
	r.procs[i] = nil

	if err := p.signal(syscall.SIGTERM); err != nil {
		return err
	}

	<-p.exited

	return nil
}

// Pause stops replica i with SIGSTOP, as a long GC pause or a frozen VM would.
func (r *ReplicaSet) Pause(i int) error { return r.procs[i].signal(syscall.SIGSTOP) }

// Resume continues replica i after Pause.
func (r *ReplicaSet) Resume(i int) error { return r.procs[i].signal(syscall.SIGCONT) }

// Close stops every replica, the fleet and etcd.
func (r *ReplicaSet) Close() error {
	var err error

	for i := range r.procs {
		err = errors.Join(err, r.Kill(i))

		if r.clients[i] != nil {
			err = errors.Join(err, r.clients[i].Close())
		}
	}

	return errors.Join(err, r.Fleet.Close(), r.Etcd.Close())
}

// Log is what replica i logged so far, over all its runs.
func (r *ReplicaSet) Log(i int) (string, error) {
	files, err := filepath.Glob(filepath.Join(filepath.Dir(r.replicaDir(i)), "engine-*.log"))
	if err != nil {
		return "", err
	}

	var b strings.Builder

	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return "", fmt.Errorf("reading replica %d's log: %w", i, err)
		}

		b.Write(data)
	}

	return b.String(), nil
}
