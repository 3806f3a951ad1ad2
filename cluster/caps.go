package cluster

import (
	"context"
	"encoding/hex"
	"fmt"
	"log/slog"
	"strconv"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/leasehold/leasehold/fsm"
	"github.com/leasehold/leasehold/transport"
	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

// Caps on what the state machine holds (DESIGN.md, "Caps on keys and
// sessions"). The leader refuses a request that would add a key or a session
// past its cap before proposing it, so no replica's state depends on the cap.

// capKind is a capped resource.
type capKind int

const (
	capKeys capKind = iota
	capSessions
	numCaps
)

// capNames are each cap's metric reason, flag and FullError resource.
var capNames = [numCaps]struct{ reason, flag, resource string }{
	capKeys:     {"max_keys", "--max-keys", transport.FullKeys},
	capSessions: {"max_sessions", "--max-sessions", transport.FullSessions},
}

// admitState refuses, with a *transport.FullError, a command from clientID
// naming keys (nkeys of them, key(i) the i-th and whether its item carries
// an inline limit) that would make the state machine hold a session or a
// key past Config.MaxSessions or MaxKeys. An item without a limit cannot
// add its key (the machine answers NoLimit, as below the cap), so only one
// with a limit counts as new: a fail-open client must not take a mistyped
// key's NoLimit for a full cluster. Far
// below both caps it reads two atomic counts and nothing else; at a cap it
// looks the client and the keys up under the machine's lock, on the leader
// only (a follower's state may lag the leader's, and the request goes to
// the leader anyway).
func (n *Node) admitState(ctx context.Context, clientID []byte, nkeys int, key func(int) (string, bool)) error {
	keysFull := n.fsm.keys.Load() >= int64(n.cfg.MaxKeys)
	sessionsFull := n.fsm.sessions.Load() >= int64(n.cfg.MaxSessions)
	if !keysFull && !sessionsFull {
		return nil
	}
	// A ready leader has applied every entry committed before its term,
	// so what it holds is what the cluster holds.
	if err := n.waitReady(ctx); err != nil {
		return err
	}
	var (
		held   int
		newKey string
		kind   = numCaps
	)
	n.fsm.read(func(m *fsm.Machine) {
		st := m.Stats()
		if st.Sessions >= n.cfg.MaxSessions && !m.HasSession(string(clientID)) {
			kind, held = capSessions, st.Sessions
			return
		}
		if st.Keys < n.cfg.MaxKeys {
			return
		}
		for i := range nkeys {
			k, limited := key(i)
			if _, _, ok := m.Lookup(k); !ok && limited {
				kind, held, newKey = capKeys, st.Keys, k
				return
			}
		}
	})
	if kind == numCaps {
		return nil
	}
	return n.refuseFull(kind, held, string(clientID), newKey)
}

// limitedItem is an item of an Acquire, Charge or Restrict.
type limitedItem interface {
	GetKey() string
	GetLimit() *pb.Limit
}

// itemKeys is admitState's key function for items.
func itemKeys[I limitedItem](items []I) func(int) (string, bool) {
	return func(i int) (string, bool) { return items[i].GetKey(), items[i].GetLimit() != nil }
}

// A refusal at a cap proposes nothing, so a cluster that is full and sent
// nothing else stood still: log time moves, and the idle sweep examines two
// keys and two sessions, only when a command applies. An attack's sessions
// outlived their SessionTTL of wall time by as long as no admitted command
// came (a review: a new client was still refused 10.5 minutes after the
// last attacker session was made, until an operator's `limits set`).
// So the leader, refusing at a cap, also proposes sweepNudgeCommands empty
// Releases (no client, lease 0), at most every sweepNudgeEvery. Every
// replica, of every build, applies one as nothing but the log time's step
// and the sweep's (fsm: lease-gone, no session, no key), so it needs no
// command level; the applied-commands metric counts them as releases
// answered lease_gone. At these values the sweep examines up to 512 keys
// and 512 sessions a second while requests are refused: the default
// MaxSessions in 40 s.
const (
	sweepNudgeCommands = 64
	sweepNudgeEvery    = 250 * time.Millisecond
)

// nudgeSweep proposes the sweep's empty commands unless it did within
// sweepNudgeEvery. It does not wait for them: a leader that lost its
// leadership meanwhile proposes nothing.
func (n *Node) nudgeSweep() {
	now := int64(n.cfg.Monotonic())
	last := n.sweepNudged.Load()
	if now-last < int64(sweepNudgeEvery) || !n.sweepNudged.CompareAndSwap(last, now) {
		return
	}
	rs := make([]*request, sweepNudgeCommands)
	for i := range rs {
		rs[i] = newRequest(&fsm.Release{})
	}
	n.batch.enqueue(rs...)
}

// refuseFull counts and logs a refusal at cap kind, nudges the sweep, and
// returns its error.
func (n *Node) refuseFull(kind capKind, held int, clientID, key string) error {
	n.nudgeSweep()
	c := capNames[kind]
	var (
		reason string
		limit  int
	)
	switch kind {
	case capKeys:
		limit = n.cfg.MaxKeys
		reason = fmt.Sprintf("the cluster holds %d keys, at its cap (%s %d); key %q is new. Keys the cluster holds "+
			"are served; it forgets a key once its limit has refilled and no lease holds it. Send fewer distinct keys, "+
			"or have the operator raise %s on every node", held, c.flag, limit, key, c.flag)
	case capSessions:
		limit = n.cfg.MaxSessions
		reason = fmt.Sprintf("the cluster holds %d client sessions, at its cap (%s %d); client_id %s is new. A session "+
			"ends %v after its client's last request. Reuse one client_id per process (one Client), "+
			"or have the operator raise %s on every node", held, c.flag, limit, showClientID(clientID), fsm.SessionTTL, c.flag)
	}
	if m := n.metrics; m != nil {
		m.refusedSeries[kind].Inc()
	}
	// The flag and its value, as the client's error says: an operator
	// reading the log decides whether to raise it.
	n.fullLog.Log(n.log, slog.LevelWarn, "state machine full: refused a request that would add to it",
		"cap", c.reason, "flag", c.flag, "max", limit, "held", held, "client_id", showClientID(clientID), "key", key)
	return &transport.FullError{Resource: c.resource, Reason: reason}
}

// showClientID prints a client_id for a person: quoted if it is printable
// text, as a raw gRPC caller may choose one, else in hex, as the SDK's 16
// random bytes read (an attacker's pass saw them as a quoted string of
// escapes).
func showClientID(id string) string {
	printable := utf8.ValidString(id)
	for _, r := range id {
		printable = printable && unicode.IsPrint(r)
	}
	if printable {
		return strconv.Quote(id)
	}
	return "0x" + hex.EncodeToString([]byte(id))
}
