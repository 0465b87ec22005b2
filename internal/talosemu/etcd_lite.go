package talosemu

import (
	"context"
	"fmt"
	"sort"
	"sync"

	"github.com/siderolabs/talos/pkg/machinery/api/machine"
)

// liteEtcdVersion is what modelled members report as their protocol and storage version.
const liteEtcdVersion = "3.6.0"

// liteEtcdCluster models the membership and leadership of a lite cluster's etcd in memory, so the engine's etcd
// checks run against a fleet of thousands of nodes without a process per member.
type liteEtcdCluster struct {
	mu      sync.Mutex
	members map[string]*liteMember
	nextID  uint64
	leader  uint64
}

func newLiteEtcdCluster(seed uint64) *liteEtcdCluster {
	return &liteEtcdCluster{members: map[string]*liteMember{}, nextID: seed<<16 | 1}
}

func (c *liteEtcdCluster) addMember(node string) *liteMember {
	c.mu.Lock()
	defer c.mu.Unlock()

	m := &liteMember{cluster: c, name: node}
	c.members[node] = m

	return m
}

// electLocked picks a running member as leader when the current one is gone; the caller holds c.mu.
func (c *liteEtcdCluster) electLocked() {
	if leader := c.byIDLocked(c.leader); leader != nil && leader.running {
		return
	}

	c.leader = 0

	for _, name := range c.sortedNamesLocked() {
		if m := c.members[name]; m.running && m.memberID != 0 {
			c.leader = m.memberID

			return
		}
	}
}

func (c *liteEtcdCluster) byIDLocked(id uint64) *liteMember {
	if id == 0 {
		return nil
	}

	for _, m := range c.members {
		if m.memberID == id {
			return m
		}
	}

	return nil
}

func (c *liteEtcdCluster) sortedNamesLocked() []string {
	names := make([]string, 0, len(c.members))
	for name := range c.members {
		names = append(names, name)
	}

	sort.Strings(names)

	return names
}

// liteMember is one node's modelled member.
type liteMember struct {
	cluster  *liteEtcdCluster
	name     string
	memberID uint64 // 0: not a member (wiped or removed)
	running  bool
}

func (m *liteMember) start(context.Context) error {
	c := m.cluster
	c.mu.Lock()
	defer c.mu.Unlock()

	if m.memberID == 0 {
		m.memberID = c.nextID
		c.nextID++
	}

	m.running = true
	c.electLocked()

	return nil
}

func (m *liteMember) stop() {
	c := m.cluster
	c.mu.Lock()
	defer c.mu.Unlock()

	m.running = false
	c.electLocked()
}

func (m *liteMember) wipe(context.Context) error {
	c := m.cluster
	c.mu.Lock()
	defer c.mu.Unlock()

	m.running = false
	m.memberID = 0
	c.electLocked()

	return nil
}

func (m *liteMember) id() uint64 {
	m.cluster.mu.Lock()
	defer m.cluster.mu.Unlock()

	return m.memberID
}

// runningLocked fails like a real node whose etcd service is not running; the caller holds the cluster lock.
func (m *liteMember) runningLocked() error {
	if !m.running || m.memberID == 0 {
		return errEtcdNotRunning
	}

	return nil
}

func (m *liteMember) memberList(context.Context, bool) ([]*machine.EtcdMember, error) {
	c := m.cluster
	c.mu.Lock()
	defer c.mu.Unlock()

	if err := m.runningLocked(); err != nil {
		return nil, err
	}

	var members []*machine.EtcdMember

	for _, name := range c.sortedNamesLocked() {
		if member := c.members[name]; member.memberID != 0 {
			members = append(members, &machine.EtcdMember{
				Id:         member.memberID,
				Hostname:   name,
				PeerUrls:   []string{"https://" + name + ":2380"},
				ClientUrls: []string{"https://" + name + ":2379"},
			})
		}
	}

	return members, nil
}

func (m *liteMember) status(context.Context) (*machine.EtcdMemberStatus, error) {
	c := m.cluster
	c.mu.Lock()
	defer c.mu.Unlock()

	if err := m.runningLocked(); err != nil {
		return nil, err
	}

	return &machine.EtcdMemberStatus{MemberId: m.memberID, Leader: c.leader, ProtocolVersion: liteEtcdVersion, StorageVersion: liteEtcdVersion}, nil
}

func (m *liteMember) forfeitLeadership(context.Context) (string, error) {
	c := m.cluster
	c.mu.Lock()
	defer c.mu.Unlock()

	if err := m.runningLocked(); err != nil {
		return "", err
	}

	if c.leader == m.memberID {
		for _, name := range c.sortedNamesLocked() {
			if other := c.members[name]; other != m && other.running && other.memberID != 0 {
				c.leader = other.memberID

				break
			}
		}
	}

	if leader := c.byIDLocked(c.leader); leader != nil {
		return leader.name, nil
	}

	return "", fmt.Errorf("etcd cluster has no leader")
}

func (m *liteMember) removeMember(_ context.Context, id uint64) error {
	c := m.cluster
	c.mu.Lock()
	defer c.mu.Unlock()

	if err := m.runningLocked(); err != nil {
		return err
	}

	removed := c.byIDLocked(id)
	if removed == nil {
		return fmt.Errorf("removing etcd member %016x: member not found", id)
	}

	removed.memberID = 0
	removed.running = false
	c.electLocked()

	return nil
}

func (m *liteMember) validateForUpgrade(context.Context) error {
	c := m.cluster
	c.mu.Lock()
	defer c.mu.Unlock()

	if err := m.runningLocked(); err != nil {
		return err
	}

	var count int

	for _, member := range c.members {
		if member.memberID != 0 {
			count++
		}
	}

	if count == 2 {
		return fmt.Errorf("etcd member count(%d) is insufficient to maintain quorum if upgrade commences", count)
	}

	for _, name := range c.sortedNamesLocked() {
		if member := c.members[name]; member.memberID != 0 && !member.running {
			return fmt.Errorf("etcd member %016x is not healthy; all members must be healthy to perform an upgrade", member.memberID)
		}
	}

	return nil
}
