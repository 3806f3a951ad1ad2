package fsm

import (
	"fmt"
	"time"

	"github.com/leasehold/leasehold/limiter"
)

// Tuning constants. They are part of the replicated behaviour: every replica
// must use the same values, so they are constants, not configuration.
const (
	// SessionTTL is how long, in log time, the machine remembers a client's
	// results after its last command. A client must not retry a command
	// older than this; if it does, an Acquire may be granted again (wasting
	// tokens, never over-admitting) and a Release is still idempotent by
	// lease id.
	SessionTTL = 10 * time.Minute
	// MaxResultsPerClient bounds the remembered results per client; the
	// oldest is forgotten first and a retry of it gets StatusStale.
	MaxResultsPerClient = 256
	// sweepPerCommand is how many keys and sessions each applied command
	// examines for idleness.
	sweepPerCommand = 2
)

// Machine is Leasehold's replicated state machine: every limit, bucket, window,
// lease and client session, changed only by Apply.
//
// It never reads a clock: each command carries the leader's log-time stamp and
// Apply clamps it to be non-decreasing. It never iterates a map where the order
// could reach its state or output, so replicas fed the same entries hold the
// same state and write byte-identical snapshots.
//
// A Machine is not safe for concurrent use; the caller (cluster's raft.FSM
// adapter) serialises Apply, Snapshot and Restore.
type Machine struct {
	now int64 // log time of the last applied command, nanoseconds

	// keys maps a key to its packed slot (see slot). entries holds the key
	// states densely, in an order that depends only on the applied commands.
	keys    map[string]slot
	entries []entry
	windows map[string]*limiter.WindowState
	limits  limitTable
	sweep   int // next entry the idle sweep examines

	leases    map[uint64]*lease
	expiries  expiryHeap
	nextLease uint64
	active    map[string]int32 // live leases per key

	sessions     map[string]*session
	sessionOrder []*session
	sessionSweep int

	dec, sub decoder

	// Scratch space of acquire, not replicated state: the compiled inline
	// limits of an acquire's new keys, and the last inline limit compiled.
	inline  [MaxItems]compiled
	memoDef Limit
	memo    compiled
	memoOK  bool
}

// entry is the state of one key: 24 bytes, plus its map slot.
type entry struct {
	key string
	// state is the token bucket's TAT, or the units a concurrency limit
	// holds; sliding windows keep their state in Machine.windows.
	state int64
}

// slot is a key's map value: index into entries (low 32 bits), limit id (next
// 31 bits) and whether the limit was set by SetLimit (top bit), packed so a key
// costs one word in the map.
type slot uint64

const pinnedBit = slot(1) << 63

func makeSlot(index int, limit uint32, pinned bool) slot {
	s := slot(uint32(index)) | slot(limit)<<32
	if pinned {
		s |= pinnedBit
	}
	return s
}

func (s slot) index() int           { return int(uint32(s)) }
func (s slot) limit() uint32        { return uint32(s>>32) & 0x7fffffff }
func (s slot) pinned() bool         { return s&pinnedBit != 0 }
func (s slot) withIndex(i int) slot { return s&^0xffffffff | slot(uint32(i)) }

// New returns an empty Machine at log time 0.
func New() *Machine {
	return &Machine{
		keys:      make(map[string]slot),
		windows:   make(map[string]*limiter.WindowState),
		limits:    newLimitTable(),
		leases:    make(map[uint64]*lease),
		nextLease: 1,
		active:    make(map[string]int32),
		sessions:  make(map[string]*session),
	}
}

// Now returns the log time of the last applied command, in nanoseconds.
func (m *Machine) Now() int64 { return m.now }

// Apply applies one log entry and returns one result per command: one for a
// plain command, one per sub-command for a Batch.
//
// Apply panics if the entry cannot be decoded: a replica that cannot read its
// log must stop rather than diverge. Every other problem is a Result.
func (m *Machine) Apply(entry []byte) []Result {
	return m.ApplyTo(nil, entry)
}

// ApplyTo is Apply appending its results to dst, so a caller can reuse a
// results slice across entries.
func (m *Machine) ApplyTo(dst []Result, entry []byte) []Result {
	if err := m.dec.decode(entry, false); err != nil {
		panic(fmt.Sprintf("fsm: cannot apply log entry: %v", err))
	}
	// Invariant 1: log time never goes backwards, whatever the stamp says.
	m.now = max(m.now, m.dec.now)
	m.expireLeases()
	if m.dec.typ != TypeBatch {
		return append(dst, m.applyOne(&m.dec))
	}
	for _, e := range m.dec.batch {
		if err := m.sub.decode(e, true); err != nil {
			panic(fmt.Sprintf("fsm: cannot apply batch entry: %v", err))
		}
		dst = append(dst, m.applyOne(&m.sub))
	}
	return dst
}

func (m *Machine) applyOne(d *decoder) Result {
	m.sweepIdle()
	var r Result
	switch d.typ {
	case TypeSetLimit:
		r = m.setLimit(d)
	case TypeDeleteLimit:
		r = m.deleteLimit(d)
	case TypeAcquire, TypeRelease:
		s, first, seen := m.session(d)
		if seen {
			return first
		}
		if d.typ == TypeAcquire {
			r = m.acquire(d, s)
		} else {
			r = m.release(d)
		}
		r.Time = m.now
		if s != nil {
			s.remember(d.seq, d.ackedBelow, r)
		}
		return r
	}
	r.Time = m.now
	return r
}

func checkKey(k []byte) (Result, bool) {
	switch {
	case len(k) == 0:
		return invalid(StatusInvalidKey, "key is empty"), false
	case len(k) > MaxKeyLen:
		return invalid(StatusInvalidKey, "key is %d bytes; the most is %d", len(k), MaxKeyLen), false
	}
	return Result{}, true
}

func (m *Machine) setLimit(d *decoder) Result {
	if r, ok := checkKey(d.key); !ok {
		return r
	}
	if !d.hasL {
		return invalid(StatusInvalidLimit, "no limit given for key %q", d.key)
	}
	c, err := compile(d.lim)
	if err != nil {
		return invalid(StatusInvalidLimit, "key %q: %v", d.key, err)
	}
	s, ok := m.keys[string(d.key)]
	if !ok {
		m.addKey(string(d.key), &c, true)
		return Result{Status: StatusOK}
	}
	old := m.limits.get(s.limit())
	if old.def == c.def {
		m.keys[string(d.key)] = s | pinnedBit
		return Result{Status: StatusOK}
	}
	kept := m.convert(s, old, &c)
	id := m.limits.acquire(&c)
	switch {
	case !kept:
		m.relabelLeases(string(d.key), s.limit(), 0) // their grants went with the old state
	case c.def.Algorithm == Concurrency:
		m.relabelLeases(string(d.key), s.limit(), id) // they hold units of the carried count
	}
	m.limits.release(s.limit())
	m.keys[m.entries[s.index()].key] = makeSlot(s.index(), id, true)
	return Result{Status: StatusOK}
}

// relabelLeases changes the limit id that live leases' items on key remember
// from from to to, after the key's limit changed; to == 0 (never a limit's id)
// relabels every item on key, whatever its id, so that its lease's end gives
// nothing back to a state it was never taken from. Leases are visited in heap
// order; each item changes on its own, so the order does not matter anyway.
func (m *Machine) relabelLeases(key string, from, to uint32) {
	if m.active[key] == 0 {
		return
	}
	for _, x := range m.expiries {
		l, ok := m.leases[x.id]
		if !ok {
			continue
		}
		for i := range l.items {
			if it := &l.items[i]; it.key == key && (it.limit == from || to == 0) {
				it.limit = to
			}
		}
	}
}

// convert carries a key's state over to a new limit, on the safe side: a
// bucket keeps its debt in time, a window with the same geometry and a
// concurrency limit keep their counts, and anything else starts drained. It
// reports whether the state carried over.
func (m *Machine) convert(s slot, old, c *compiled) (kept bool) {
	e := &m.entries[s.index()]
	switch {
	case old.def.Algorithm == TokenBucket && c.def.Algorithm == TokenBucket:
	case old.def.Algorithm == Concurrency && c.def.Algorithm == Concurrency:
	case old.def.Algorithm == SlidingWindow && c.def.Algorithm == SlidingWindow &&
		old.def.Period == c.def.Period && old.def.Slots == c.def.Slots:
	default:
		delete(m.windows, e.key)
		switch c.def.Algorithm {
		case TokenBucket:
			e.state = addSat(m.now, int64(c.bucket.Cost(c.def.Burst)))
		case SlidingWindow:
			ws := &limiter.WindowState{}
			c.window.TakeSpan(ws, m.now, m.now, c.def.Limit)
			m.windows[e.key] = ws
			e.state = 0
		case Concurrency:
			e.state = 0
		}
		return false
	}
	return true
}

func (m *Machine) deleteLimit(d *decoder) Result {
	if r, ok := checkKey(d.key); !ok {
		return r
	}
	if s, ok := m.keys[string(d.key)]; ok {
		m.relabelLeases(string(d.key), 0, 0) // a re-created key owes its leases nothing
		m.removeKey(s)
	}
	return Result{Status: StatusOK}
}

// addKey adds a new key with limit c and returns its slot.
func (m *Machine) addKey(key string, c *compiled, pinned bool) slot {
	id := m.limits.acquire(c)
	s := makeSlot(len(m.entries), id, pinned)
	m.entries = append(m.entries, entry{key: key})
	m.keys[key] = s
	return s
}

// removeKey forgets a key: the last entry moves into its place.
func (m *Machine) removeKey(s slot) {
	i := s.index()
	key := m.entries[i].key
	m.limits.release(s.limit())
	delete(m.keys, key)
	delete(m.windows, key)
	last := len(m.entries) - 1
	if i != last {
		moved := m.entries[last]
		m.entries[i] = moved
		m.keys[moved.key] = m.keys[moved.key].withIndex(i)
	}
	m.entries[last] = entry{}
	m.entries = m.entries[:last]
	// Keep the sweep cursor in [0, len(entries)], as Restore checks.
	m.sweep = min(m.sweep, last)
}

// sweepIdle examines a few keys and sessions, in a fixed rotation, and forgets
// those whose state carries no information any more: a full bucket, an empty
// window, a concurrency limit holding nothing, with no live lease and no limit
// set by SetLimit. The rotation is part of the state, so every replica forgets
// the same keys at the same command.
func (m *Machine) sweepIdle() {
	for range sweepPerCommand {
		if len(m.entries) == 0 {
			break
		}
		if m.sweep >= len(m.entries) {
			m.sweep = 0
		}
		e := &m.entries[m.sweep]
		if e.state > m.now {
			m.sweep++ // a bucket still refilling, the common case
			continue
		}
		if m.active[e.key] > 0 {
			m.sweep++ // leased: checked before the key's slot, as it is common
			continue
		}
		s := m.keys[e.key]
		if !s.pinned() && m.idle(e, m.limits.get(s.limit())) {
			m.removeKey(s) // the last entry moves here: examine it next
			continue
		}
		m.sweep++
	}
	for range sweepPerCommand {
		if len(m.sessionOrder) == 0 {
			break
		}
		if m.sessionSweep >= len(m.sessionOrder) {
			m.sessionSweep = 0
		}
		s := m.sessionOrder[m.sessionSweep]
		if m.now-s.lastSeen > int64(SessionTTL) {
			m.removeSession(s)
			continue
		}
		m.sessionSweep++
	}
}

func (m *Machine) idle(e *entry, c *compiled) bool {
	switch c.def.Algorithm {
	case TokenBucket:
		return e.state <= m.now
	case SlidingWindow:
		ws := m.windows[e.key]
		return ws == nil || c.window.Empty(ws, m.now)
	case Concurrency:
		return e.state == 0
	}
	return false
}

// addSat returns a+b saturated at the int64 maximum, for non-negative b.
func addSat(a, b int64) int64 {
	if s := a + b; s >= a {
		return s
	}
	return 1<<63 - 1
}

// Lookup returns the limit of key and whether it was set by SetLimit (rather
// than by a client's acquire). It is a read: it changes nothing.
func (m *Machine) Lookup(key string) (l Limit, pinned, ok bool) {
	s, ok := m.keys[key]
	if !ok {
		return Limit{}, false, false
	}
	return m.limits.get(s.limit()).def, s.pinned(), true
}

// Stats counts what the machine holds.
type Stats struct {
	Keys, Leases, Sessions int
}

// Stats returns the machine's counts.
func (m *Machine) Stats() Stats {
	return Stats{Keys: len(m.entries), Leases: len(m.leases), Sessions: len(m.sessionOrder)}
}
