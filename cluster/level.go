package cluster

import (
	"fmt"
	"slices"
	"strings"

	"github.com/hashicorp/raft"

	"github.com/leasehold/leasehold/fsm"
	"github.com/leasehold/leasehold/transport"
	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

// commandLevel is the level of the commands this build applies: every
// replica that gossips a level applies every command field of that level
// and below. Level 1 knows Acquire.Span (fsm field 9); level 2
// Acquire.SpanBuckets (fsm field 10), which a level-1 replica stops on;
// level 3 the DeleteLimits command (fsm type 9).
//
// The rule for every future command field that a replica predating it
// would stop on (fsm treats an unknown field as corruption): bump
// commandLevel, and have the leader put the field in a command only while
// sendLevel is at least the new level, that is once every server of the
// configuration gossips a level that knows it (DESIGN.md, "Membership",
// command levels). A field an old replica would ignore needs no level.
const commandLevel = 3

// levelSpan is the first level that knows Acquire.Span; levelSpanBuckets
// the first that knows Acquire.SpanBuckets; levelDeleteLimits the first
// that knows DeleteLimits.
const (
	levelSpan         = 1
	levelSpanBuckets  = 2
	levelDeleteLimits = 3
)

// clusterLevel returns the level every server of cfgs (raft's latest
// configuration and the committed one: a server added by an entry not yet
// committed already receives the entries after it) can apply, as gossip
// knows them: the least level the servers gossip, self at commandLevel; a
// server gossip does not know, or whose meta did not decode or has no
// level, counts as 0.
func clusterLevel(self string, members []memberInfo, cfgs ...raft.Configuration) int {
	gossiped := make(map[string]int, len(members))
	for _, mb := range members {
		if mb.metaOK {
			gossiped[mb.id] = mb.meta.Level
		}
	}
	level, known := commandLevel, false
	for _, cfg := range cfgs {
		for _, s := range cfg.Servers {
			known = true
			if string(s.ID) == self {
				continue
			}
			level = min(level, gossiped[string(s.ID)]) // absent: 0
		}
	}
	if !known {
		return 0 // no configuration yet: nothing known
	}
	return max(level, 0)
}

// updateLevel recomputes the level this node sends commands at
// (Node.sendLevel) from gossip and the configurations, and logs, while it
// leads, when the level changes. Called from the membership loop on every
// gossip change, reconcile and stats tick, so a configuration change is
// seen within GossipConfig.UpdateInterval.
func (m *membership) updateLevel() {
	committed, _ := m.n.fsm.configuration()
	var latest raft.Configuration
	if f := m.n.raft.GetConfiguration(); f.Error() == nil {
		latest = f.Configuration()
	}
	members := m.g.members()
	level := clusterLevel(m.n.cfg.ID, members, committed, latest)
	old := int(m.n.sendLevel.Swap(int32(level)))
	if old == level || !m.n.IsLeader() {
		return
	}
	if level > old {
		m.log.Info("every server of the configuration gossips a command level this leader may now send at",
			"level", level, "was", old)
		return
	}
	behind := serversBelow(m.n.cfg.ID, old, members, committed, latest)
	m.log.Info("a server of the configuration gossips a lower command level (an older build, or one gossip does not know): "+
		"this leader sends commands at the lower level", "level", level, "was", old, "servers", behind)
}

// serversBelow returns the servers of cfgs, other than self, that gossip
// a level below level, or that gossip does not know or whose meta did not
// decode: the ones keeping clusterLevel below it.
func serversBelow(self string, level int, members []memberInfo, cfgs ...raft.Configuration) []string {
	var behind []string
	for _, cfg := range cfgs {
		for _, s := range cfg.Servers {
			id := string(s.ID)
			if id == self || slices.Contains(behind, id) {
				continue
			}
			i := slices.IndexFunc(members, func(mb memberInfo) bool { return mb.id == id })
			if i < 0 || !members[i].metaOK || members[i].meta.Level < level {
				behind = append(behind, id)
			}
		}
	}
	return behind
}

// requireLevel returns an error that Is transport.ErrUpgradeNeeded if this
// node sends commands below level, naming what asked for a command of that
// level and the servers that keep the level down: the request is refused
// rather than put in the log for them to stop on.
func (n *Node) requireLevel(level int, what string) error {
	have := int(n.sendLevel.Load())
	if have >= level {
		return nil
	}
	servers := "(this node has not seen the servers' levels yet)"
	if n.mem != nil {
		committed, _ := n.fsm.configuration()
		var latest raft.Configuration
		if f := n.raft.GetConfiguration(); f.Error() == nil {
			latest = f.Configuration()
		}
		if behind := serversBelow(n.cfg.ID, level, n.mem.g.members(), committed, latest); len(behind) > 0 {
			servers = strings.Join(behind, ", ")
		}
	}
	return fmt.Errorf("%w: %s needs command level %d, and the cluster is at %d: upgrade these servers to this "+
		"build (or wait for gossip to see them upgraded), then try again: %s",
		transport.ErrUpgradeNeeded, what, level, have, servers)
}

// acquireCommandAt converts an AcquireRequest to an fsm.Acquire that
// replicas at level can apply. A request's span_ns asks its windows for
// the time its central grant may be spent in, and with span_buckets its
// token buckets too: from levelSpanBuckets the command says so
// (SpanBuckets), and token buckets answer their MaxLease; below it only
// windows answer (a token bucket's TTL is 0, and the SDK admits it as
// before); below levelSpan the Span is left out, which makes a central
// window decision instant too. SpanBuckets follows the request's
// span_buckets, never span_ns alone: clients that predate it send span_ns
// on windows, and a static cluster (its level its own build's) being
// upgraded node by node would otherwise write field 10 for its old
// replicas to stop on (README: with static peers, every node before any
// client).
func acquireCommandAt(req *pb.AcquireRequest, level int) *fsm.Acquire {
	c := acquireCommand(req)
	switch {
	case level < levelSpan:
		c.Span = 0
	case level >= levelSpanBuckets:
		c.SpanBuckets = c.Span > 0 && req.GetSpanBuckets()
	}
	return c
}
