package cluster

import (
	"math"
	"sync"
	"time"

	"github.com/leasehold/leasehold/fsm"
	"github.com/leasehold/leasehold/internal/topk"
)

// Activity tracking (DESIGN.md, "Metrics, health and per-key activity").
const (
	// trackedKeys is how many keys the per-key summary holds.
	trackedKeys = 256
	// activityHalfLife is how fast the summary forgets: a key's weight
	// halves every 30s without traffic, so it ranks keys by what they did
	// over the last minute or so.
	activityHalfLife = 30 * time.Second
)

// activity counts what this node applied, outside the replicated state:
// totals for the metrics, and per key the tokens granted and the denials, in
// a bounded summary of the busiest keys (internal/topk). Every node applies
// every command, so every node has its own, equal up to timing. It is fed
// from the FSM goroutine after each batch of entries, from the entries and
// their results (fsm.Visit): Apply itself is unchanged. It is safe for
// concurrent use.
type activity struct {
	metrics *nodeMetrics // nil: none

	mu struct {
		sync.Mutex
		keys *topk.Set
		// admitted and denied over every key, since the node started.
		admitted, denied uint64
		v                tally
	}
}

func newActivity(m *nodeMetrics) *activity {
	a := &activity{metrics: m}
	a.mu.keys = topk.New(trackedKeys)
	a.mu.v.a = a
	return a
}

// tally is the fsm.Visitor that counts one batch; its fields are
// activity.mu's.
type tally struct {
	a   *activity
	res []fsm.Result // the entry being visited's
	typ fsm.Type
	st  fsm.Status
	// lease: the command is an Acquire with a TTL (not central).
	lease bool
	// Totals of the batch, flushed to the metrics at its end.
	decisions [2][2]uint64
	granted   [2]uint64
	released  uint64
}

var _ fsm.Visitor = (*tally)(nil)

// applied counts the entries raft applied together and their results
// (nil for an entry that is not a command).
func (a *activity) applied(data [][]byte, results [][]fsm.Result) {
	a.mu.Lock()
	defer a.mu.Unlock()
	v := &a.mu.v
	for i, d := range data {
		if d == nil {
			continue
		}
		v.res = results[i]
		// The entry applied, so it decodes; an error here is a bug in
		// Visit, and costs only the counts.
		_ = fsm.Visit(d, v)
	}
	v.res = nil
	v.flush()
}

func (v *tally) Command(i int, typ fsm.Type, ttl time.Duration) {
	v.typ, v.st, v.lease = typ, 0, ttl > 0
	if i < len(v.res) {
		v.st = v.res[i].Status
	}
	if m := v.a.metrics; m != nil {
		m.commandCounter(typ, v.st).Inc()
	}
	if typ == fsm.TypeAcquire {
		switch v.st {
		case fsm.StatusOK:
			v.decisions[b2i(v.lease)][0]++
		case fsm.StatusDenied:
			v.decisions[b2i(v.lease)][1]++
		}
	}
}

func (v *tally) Key(i, item int, key []byte) {
	if v.typ != fsm.TypeAcquire || i >= len(v.res) {
		return
	}
	var granted, denied uint64
	switch v.st {
	case fsm.StatusOK:
		if r := &v.res[i]; item < len(r.Items) {
			granted = uint64(max(r.Items[item].Granted, 0))
		}
	case fsm.StatusDenied:
		denied = 1
	default:
		return
	}
	v.granted[b2i(v.lease)] += granted
	v.a.mu.admitted += granted
	v.a.mu.denied += denied
	v.a.mu.keys.Add(key, float64(granted+denied), granted, denied)
}

func (v *tally) Unused(i int, total int64) {
	if i < len(v.res) && v.res[i].Status == fsm.StatusOK && total > 0 {
		v.released += uint64(total)
	}
}

// flush adds the batch's totals to the metrics and clears them.
func (v *tally) flush() {
	if m := v.a.metrics; m != nil {
		for mode := range 2 {
			for res := range 2 {
				if n := v.decisions[mode][res]; n > 0 {
					m.decisionSeries[mode][res].Add(float64(n))
				}
			}
			if n := v.granted[mode]; n > 0 {
				m.grantedSeries[mode].Add(float64(n))
			}
		}
		if v.released > 0 {
			m.released.Add(float64(v.released))
		}
	}
	v.decisions, v.granted, v.released = [2][2]uint64{}, [2]uint64{}, 0
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// decay ages the per-key weights by elapsed (activityHalfLife).
func (a *activity) decay(elapsed time.Duration) {
	f := math.Exp2(-elapsed.Seconds() / activityHalfLife.Seconds())
	a.mu.Lock()
	a.mu.keys.Decay(f)
	a.mu.Unlock()
}

// KeyActivity is one of the busiest keys a node has applied commands for.
type KeyActivity struct {
	Key string
	// Weight ranks the key: tokens granted plus denials, halving every
	// 30 seconds; an over-estimate by at most WeightErr.
	Weight, WeightErr float64
	// Admitted is the tokens granted to the key and Denied the denied
	// acquires naming it, since Serial began: since the key entered the
	// summary. A rate is the change of these between two readings with
	// the same Serial.
	Admitted, Denied uint64
	Serial           uint64
}

// Activity is what a node has applied, as counted outside the replicated
// state (see BusiestKeys).
type Activity struct {
	// Admitted and Denied count over every key since the node started:
	// tokens granted, and denied acquire items.
	Admitted, Denied uint64
	// Keys are the busiest keys, greatest Weight first.
	Keys []KeyActivity
}

// Activity returns the n busiest keys this node applied commands for that
// contain substr ("" for all), and its totals. Every node applies every
// command, so any node answers for the whole cluster; the counts start when
// the node starts (they are not replicated, and a restart forgets them).
// Keys are ranked by a space-saving summary of trackedKeys (256) keys: a key
// that takes more than 1/256 of the recent traffic is always among them.
func (n *Node) Activity(limit int, substr string) Activity {
	a := n.activity
	a.mu.Lock()
	defer a.mu.Unlock()
	out := Activity{Admitted: a.mu.admitted, Denied: a.mu.denied}
	for _, e := range a.mu.keys.Top(nil, limit, substr) {
		out.Keys = append(out.Keys, KeyActivity{Key: e.Key, Weight: e.Weight, WeightErr: e.Err,
			Admitted: e.Admitted, Denied: e.Denied, Serial: e.Serial})
	}
	return out
}

// KeyState is what the replicated state holds about a key, for operators.
type KeyState struct {
	Key   string
	Found bool
	// Limit is the key's limit; Pinned reports that it was set by
	// SetLimit (not by a client's acquire).
	Limit  fsm.Limit
	Pinned bool
	// Lessees is the number of clients holding live leases on the key,
	// Leases the live leases that include it and Leased their tokens.
	Lessees, Leases int
	Leased          int64
}

// KeyStates reads the state of keys from this node's state machine, as far
// as it has applied the log: not linearizable (GetLimit is), and not meant
// to be. It visits every live lease once to count them, so call it for a
// page of keys, not per request.
func (n *Node) KeyStates(keys []string) []KeyState {
	out := make([]KeyState, len(keys))
	totals := make(map[string]*fsm.LeaseTotal, len(keys))
	for i, k := range keys {
		out[i].Key = k
		totals[k] = &fsm.LeaseTotal{}
	}
	n.fsm.read(func(m *fsm.Machine) {
		for i, k := range keys {
			if info, ok := m.KeyInfo(k); ok {
				out[i].Found, out[i].Limit, out[i].Pinned, out[i].Lessees = true, info.Limit, info.Pinned, info.Lessees
			}
		}
		m.CountLeases(totals)
	})
	for i, k := range keys {
		out[i].Leases, out[i].Leased = totals[k].Leases, totals[k].Tokens
	}
	return out
}

// stats returns the state machine's counts.
func (n *Node) stats() fsm.Stats {
	var st fsm.Stats
	n.fsm.read(func(m *fsm.Machine) { st = m.Stats() })
	return st
}
