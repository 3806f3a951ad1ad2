package cluster

import (
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/leasehold/leasehold/fsm"
	"github.com/leasehold/leasehold/internal/topk"
)

// Activity tracking (DESIGN.md, "Metrics, health and per-key activity").
const (
	// trackedKeys is how many keys the per-key summary holds.
	trackedKeys = 1024
	// activityHalfLife is how fast the summary forgets: a key's weight
	// halves every 30s without traffic, so it ranks keys by what they did
	// over the last minute or so.
	activityHalfLife = 30 * time.Second
)

// activity counts what this node applied, outside the replicated state:
// totals for the metrics, and per key the tokens granted and the denials, in
// a bounded summary of the busiest keys (internal/topk). Every node applies
// every command, so every node has its own, equal up to timing.
//
// The state machine tells it each command as it applies it (fsm.Observer):
// nothing is decoded twice, and no decision depends on it. The apply path
// only adds to the batch's totals and copies each key into a buffer; run,
// on its own goroutine, folds the buffers into the summary, so the
// summary's map and heap cost the apply path nothing. If run falls more
// than activityQueue buffers behind, a batch's keys are dropped (and
// counted in leasehold_activity_dropped_total); the metrics' totals never
// are. It is safe for concurrent use.
type activity struct {
	metrics *nodeMetrics // nil: none

	// Only the FSM goroutine, between begin and end.
	v   tally
	cur *keyBatch

	full, free chan *keyBatch
	dropped    atomic.Uint64

	mu struct {
		sync.Mutex
		keys *topk.Set
		// admitted and denied over every key, since the node started.
		admitted, denied uint64
	}
}

// Activity buffers (see activity).
const (
	// activityQueue is how many batches of keys may wait for run.
	activityQueue = 4
	// maxBatchKeyBytes bounds one buffer's keys; beyond it a batch's
	// further keys are dropped.
	maxBatchKeyBytes = 4 << 20
)

// keyBatch is the keys one batch of entries touched, in order.
type keyBatch struct {
	arena []byte
	items []keyItem
}

type keyItem struct {
	off, n          uint32 // the key: arena[off:off+n]
	granted, denied uint64
}

func newActivity(m *nodeMetrics) *activity {
	a := &activity{metrics: m, full: make(chan *keyBatch, activityQueue), free: make(chan *keyBatch, activityQueue+2)}
	a.mu.keys = topk.New(trackedKeys)
	a.v.a = a
	a.cur = &keyBatch{}
	// With cur, the queue and the one run holds, activityQueue+2 buffers
	// are always enough: end takes a free one only after queueing one.
	for range activityQueue + 1 {
		a.free <- &keyBatch{}
	}
	return a
}

// observer returns the fsm.Observer that feeds a, from the FSM goroutine;
// the raft.FSM adapter calls end after each batch of entries.
func (a *activity) observer() fsm.Observer { return &a.v }

// end adds the batch's totals to the metrics and queues its keys for run.
// Only the FSM goroutine calls it, after each batch of entries.
func (a *activity) end() {
	a.v.flush()
	if len(a.cur.items) == 0 {
		return
	}
	select {
	case a.full <- a.cur:
		a.cur = <-a.free
	default:
		a.dropped.Add(uint64(len(a.cur.items)))
		if m := a.metrics; m != nil {
			m.activityDropped.Add(float64(len(a.cur.items)))
		}
	}
	a.cur.arena, a.cur.items = a.cur.arena[:0], a.cur.items[:0]
}

// run folds the queued batches of keys into the summary until stop is
// closed.
func (a *activity) run(stop <-chan struct{}) {
	for {
		select {
		case <-stop:
			return
		case b := <-a.full:
			a.fold(b)
			a.free <- b
		}
	}
}

// fold adds one batch of keys to the summary.
func (a *activity) fold(b *keyBatch) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, it := range b.items {
		a.mu.admitted += it.granted
		a.mu.denied += it.denied
		a.mu.keys.Add(b.arena[it.off:it.off+it.n], float64(it.granted+it.denied), it.granted, it.denied)
	}
}

// tally is the fsm.Observer that counts one batch; only the FSM goroutine
// uses it.
type tally struct {
	a *activity
	// Totals of the batch, flushed to the metrics at its end.
	commands  [fsmTypes][fsmStatuses]uint64
	decisions [2][2]uint64 // [central, lease][granted, denied]
	granted   [2]uint64
	released  uint64
	charged   uint64
}

var _ fsm.Observer = (*tally)(nil)

// Applied counts one command.
func (v *tally) Applied(c *fsm.Applied) {
	st := c.Result.Status
	v.commands[min(int(c.Type), fsmTypes-1)][min(int(st), fsmStatuses-1)]++
	switch c.Type {
	case fsm.TypeAcquire:
		mode := b2i(c.TTL > 0)
		switch st {
		case fsm.StatusOK:
			v.decisions[mode][0]++
			for i, key := range c.Keys {
				var granted uint64
				if i < len(c.Result.Items) {
					granted = uint64(max(c.Result.Items[i].Granted, 0))
				}
				v.granted[mode] += granted
				v.key(key, granted, 0)
			}
		case fsm.StatusDenied:
			v.decisions[mode][1]++
			for _, key := range c.Keys {
				v.key(key, 0, 1)
			}
		}
	case fsm.TypeCharge:
		// Usage settled above a reservation: tokens the key spent.
		if st == fsm.StatusOK {
			for i, key := range c.Keys {
				if i < len(c.Result.Items) && c.Result.Items[i].Granted > 0 {
					n := uint64(c.Result.Items[i].Granted)
					v.charged += n
					v.key(key, n, 0)
				}
			}
		}
	case fsm.TypeRelease:
		if st == fsm.StatusOK && c.HasUnused && c.Unused > 0 {
			v.released += uint64(c.Unused)
		}
	}
}

// key records one key's counts in the batch's buffer.
func (v *tally) key(key []byte, granted, denied uint64) {
	b := v.a.cur
	if len(b.arena)+len(key) > maxBatchKeyBytes {
		v.a.dropped.Add(1)
		return
	}
	b.items = append(b.items, keyItem{off: uint32(len(b.arena)), n: uint32(len(key)), granted: granted, denied: denied})
	b.arena = append(b.arena, key...)
}

// flush adds the batch's totals to the metrics and clears them.
func (v *tally) flush() {
	if m := v.a.metrics; m != nil {
		for t := range fsmTypes {
			for s, n := range v.commands[t] {
				if n > 0 {
					m.commandCounter(fsm.Type(t), fsm.Status(s)).Add(float64(n))
				}
			}
		}
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
		if v.charged > 0 {
			m.charged.Add(float64(v.charged))
		}
	}
	v.commands, v.decisions, v.granted, v.released, v.charged = [fsmTypes][fsmStatuses]uint64{}, [2][2]uint64{}, [2]uint64{}, 0, 0
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
// Keys are ranked by a space-saving summary of trackedKeys (1024) keys: a key
// that takes more than 1/1024 of the recent traffic is always among them.
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
