package fsm

import (
	"fmt"
	"slices"
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

	// entries holds the key states densely, in an order that depends only
	// on the applied commands; keys finds a key's entry.
	keys    keyIndex
	entries []entry
	windows map[string]*window
	// floors holds, for a token-bucket key a Restrict lowered or blocked,
	// the TAT below which no refund may take it (see restrict). It is
	// state, in snapshots with its key, and leaves with its key.
	floors map[string]int64
	limits limitTable
	sweep  int // next entry the idle sweep examines

	leases    leaseTable // live leases by id
	expiries  expiryHeap
	nextLease uint64
	spare     []*lease // records of ended leases, for reuse; not state
	// held counts the live leases of each (key, client) pair that has any;
	// a key's entry counts its pairs, its lessees, for the fair share.
	// Derived from the leases: Restore rebuilds it, and it is never
	// iterated. Each lease item points at its pair's count.
	held map[lessee]*int32
	// orphans counts the lessees of keys that no longer exist (deleted
	// while leased); an existing key counts its own in its entry.
	orphans map[string]int32

	sessions     map[string]*session
	sessionOrder []*session
	sessionSweep int

	// gen counts the Captures taken. A lease, session or window whose gen
	// is below it may be referenced by a Capture, which must go on seeing
	// it as it was: the machine copies such a record before changing it
	// (copy on write), and never reuses it. Not replicated state.
	gen uint64

	dec, sub decoder

	// Scratch space of acquire, not replicated state: the compiled inline
	// limits of an acquire's new keys, and the last inline limit compiled.
	inline  [MaxItems]compiled
	memoDef Limit
	memo    compiled
	memoOK  bool
	// scratch holds a command's canonical form while its digest is
	// computed; not replicated state.
	scratch []byte

	// observer, if set, is told each command as it applies (observe.go);
	// not replicated state. applied is its reused argument.
	observer Observer
	applied  Applied

	// noDebtCap is a test seam, never set outside tests: a known-bad
	// machine whose Charge ignores MaxDebt, for the bound test to catch.
	noDebtCap bool
}

// window is the state of a sliding-window key, with the gen it was made or
// copied at (see Machine.gen).
type window struct {
	limiter.WindowState
	gen uint64
}

// ownWindow returns key's window w, copied first if a Capture may hold it, so
// that the caller may change it.
func (m *Machine) ownWindow(key string, w *window) *window {
	if w.gen == m.gen {
		return w
	}
	c := &window{WindowState: limiter.WindowState{Base: w.Base, Counts: slices.Clone(w.Counts)}, gen: m.gen}
	m.windows[key] = c
	return c
}

// entry is the state of one key: 32 bytes, plus its slot in the key index.
type entry struct {
	key string
	// state is the token bucket's TAT, or the units a concurrency limit
	// holds; sliding windows keep their state in Machine.windows.
	state int64
	meta  meta
}

// meta packs the rest of a key's state into one word: its limit id (low 31
// bits), whether the limit was set by SetLimit (bit 31), and the number of
// distinct clients holding live leases on the key, its lessees (high 32
// bits).
type meta uint64

const (
	limitBits   = meta(1)<<31 - 1
	pinnedBit   = meta(1) << 31
	lesseeShift = 32
	oneLessee   = meta(1) << lesseeShift
)

func makeMeta(limit uint32, pinned bool) meta {
	m := meta(limit) & limitBits
	if pinned {
		m |= pinnedBit
	}
	return m
}

func (e *entry) limit() uint32  { return uint32(e.meta & limitBits) }
func (e *entry) pinned() bool   { return e.meta&pinnedBit != 0 }
func (e *entry) lessees() int32 { return int32(e.meta >> lesseeShift) }

// setLimit changes the key's limit id and pins it, keeping its lease count.
func (e *entry) setLimit(limit uint32) {
	e.meta = e.meta&^limitBits | meta(limit)&limitBits | pinnedBit
}

// New returns an empty Machine at log time 0.
func New() *Machine {
	return &Machine{
		windows:   make(map[string]*window),
		floors:    make(map[string]int64),
		limits:    newLimitTable(),
		nextLease: 1,
		held:      make(map[lessee]*int32),
		orphans:   make(map[string]int32),
		sessions:  make(map[string]*session),
		dec:       decoder{memo: true},
		sub:       decoder{memo: true},
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
		dst = append(dst, m.applyOne(&m.dec))
		if m.observer != nil {
			m.observe(&m.dec, &dst[len(dst)-1])
		}
		return dst
	}
	for _, e := range m.dec.batch {
		if err := m.sub.decode(e, true); err != nil {
			panic(fmt.Sprintf("fsm: cannot apply batch entry: %v", err))
		}
		dst = append(dst, m.applyOne(&m.sub))
		if m.observer != nil {
			m.observe(&m.sub, &dst[len(dst)-1])
		}
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
	case TypeDeleteLimits:
		r = m.deleteLimits(d)
	case TypeAcquire, TypeRelease, TypeCharge, TypeExtend, TypeRestrict:
		var dg digest
		if len(d.clientID) > 0 {
			dg = m.digest(d)
		}
		s, first, seen := m.session(d, dg)
		if seen {
			return first
		}
		switch d.typ {
		case TypeAcquire:
			r = m.acquire(d, s)
		case TypeRelease:
			r = m.release(d)
		case TypeCharge:
			r = m.charge(d)
		case TypeExtend:
			r = m.extend(d)
		default:
			r = m.restrict(d)
		}
		r.Time, r.Decided = m.now, true
		if s != nil {
			kept := r
			// Not kept: see Result.Lessees, NoLimitKey and Decided.
			kept.Lessees, kept.NoLimitKey, kept.Decided = 0, "", false
			s.remember(d.seq, d.ackedBelow, dg, kept)
		}
		return r
	}
	r.Time, r.Decided = m.now, true
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
	i := m.keys.findBytes(m.entries, d.key)
	if i < 0 {
		m.addKey(string(d.key), &c, true)
		return Result{Status: StatusOK}
	}
	e := &m.entries[i]
	oldID := e.limit()
	old := m.limits.get(oldID)
	if old.def == c.def {
		e.meta |= pinnedBit
		return Result{Status: StatusOK}
	}
	kept := m.convert(e, old, &c)
	id := m.limits.acquire(&c)
	switch {
	case !kept:
		m.relabelLeases(e, oldID, 0) // their grants went with the old state
	case c.def.Algorithm == Concurrency:
		m.relabelLeases(e, oldID, id) // they hold units of the carried count
	}
	m.limits.release(oldID)
	e.setLimit(id)
	return Result{Status: StatusOK}
}

// relabelLeases changes the limit id that live leases' items on e's key
// remember from from to to, after the key's limit changed; to == 0 (never a
// limit's id) relabels every item on the key, whatever its id, so that its
// lease's end gives nothing back to a state it was never taken from. Leases are
// visited in heap order; each item changes on its own, so the order does not
// matter anyway.
func (m *Machine) relabelLeases(e *entry, from, to uint32) {
	if e.lessees() == 0 {
		return
	}
	for _, x := range m.expiries {
		l := m.leases.current(x)
		if l == nil {
			continue
		}
		for i := range l.items {
			if it := &l.items[i]; it.key == e.key && (it.limit == from || to == 0) {
				if l.gen != m.gen {
					l = m.ownLease(l) // a Capture may hold it
					it = &l.items[i]
				}
				it.limit = to
			}
		}
	}
}

// convert carries a key's state over to a new limit, on the safe side: a
// bucket keeps its debt in time, a window with the same geometry and a
// concurrency limit keep their counts, and anything else starts drained. It
// reports whether the state carried over.
func (m *Machine) convert(e *entry, old, c *compiled) (kept bool) {
	switch {
	case old.def.Algorithm == TokenBucket && c.def.Algorithm == TokenBucket:
	case old.def.Algorithm == Concurrency && c.def.Algorithm == Concurrency:
	case old.def.Algorithm == SlidingWindow && c.def.Algorithm == SlidingWindow &&
		old.def.Period == c.def.Period && old.window.Slots() == c.window.Slots():
		// Counted in the same slots (Slots, or Buckets), so the state and
		// the spans of live leases mean the same.
	default:
		delete(m.windows, e.key)
		delete(m.floors, e.key)
		switch c.def.Algorithm {
		case TokenBucket:
			e.state = c.bucket.Empty(m.now).TAT
		case SlidingWindow:
			ws := &window{gen: m.gen}
			c.window.TakeSpan(&ws.WindowState, m.now, m.now, c.def.Limit)
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
	i := m.keys.findBytes(m.entries, d.key)
	if i < 0 {
		return Result{Status: StatusOK}
	}
	m.relabelLeases(&m.entries[i], 0, 0) // a re-created key owes its leases nothing
	m.removeKey(i)
	return Result{Status: StatusOK, Found: true}
}

// addKey adds a new key with limit c and returns its index in entries. A key
// deleted while leased takes back the count of its lessees.
func (m *Machine) addKey(key string, c *compiled, pinned bool) int {
	mt := makeMeta(m.limits.acquire(c), pinned)
	if len(m.orphans) > 0 {
		if n, ok := m.orphans[key]; ok {
			mt |= meta(uint32(n)) << lesseeShift
			delete(m.orphans, key)
		}
	}
	i := len(m.entries)
	m.entries = append(m.entries, entry{key: key, meta: mt})
	m.keys.insert(m.entries)
	return i
}

// removeKey forgets the key of entries[i]: the last entry moves into its
// place. The count of its lessees, if any, stays in orphans.
func (m *Machine) removeKey(i int) {
	e := &m.entries[i]
	key := e.key
	m.limits.release(e.limit())
	if n := e.lessees(); n > 0 {
		m.orphans[key] = n
	}
	m.keys.remove(m.entries, i)
	delete(m.windows, key)
	if len(m.floors) > 0 {
		delete(m.floors, key)
	}
	last := len(m.entries) - 1
	if i != last {
		m.keys.move(m.entries, last, i)
		m.entries[i] = m.entries[last]
	}
	m.entries[last] = entry{}
	m.entries = m.entries[:last]
	// Keep the sweep cursor in [0, len(entries)], as Restore checks.
	m.sweep = min(m.sweep, last)
}

// lessees returns the number of clients holding live leases on key, whether
// or not the key exists.
func (m *Machine) lessees(key string) int32 {
	if i := m.keys.findString(m.entries, key); i >= 0 {
		return m.entries[i].lessees()
	}
	return m.orphans[key]
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
		if e.lessees() > 0 {
			m.sweep++ // leased
			continue
		}
		if !e.pinned() && m.idle(e, m.limits.get(e.limit())) {
			m.removeKey(m.sweep) // the last entry moves here: examine it next
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
		return ws == nil || c.window.Empty(&ws.WindowState, m.now)
	case Concurrency:
		return e.state == 0
	}
	return false
}

// Lookup returns the limit of key and whether it was set by SetLimit (rather
// than by a client's acquire). It is a read: it changes nothing.
func (m *Machine) Lookup(key string) (l Limit, pinned, ok bool) {
	i := m.keys.findString(m.entries, key)
	if i < 0 {
		return Limit{}, false, false
	}
	e := &m.entries[i]
	return m.limits.get(e.limit()).def, e.pinned(), true
}

// Stats counts what the machine holds.
type Stats struct {
	Keys, Leases, Sessions int
}

// Stats returns the machine's counts.
func (m *Machine) Stats() Stats {
	return Stats{Keys: len(m.entries), Leases: m.leases.len(), Sessions: len(m.sessionOrder)}
}
