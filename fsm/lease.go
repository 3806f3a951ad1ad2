package fsm

import (
	"slices"

	"github.com/leasehold/leasehold/limiter"
)

// lease is a grant that a client may spend until it expires. Its tokens were
// debited when it was granted; the lease record exists so that Release can
// refund the unused ones exactly once and so that concurrency units come back
// when it ends.
type lease struct {
	id      uint64
	client  string
	expires int64 // log time
	items   []leaseItem
	// one holds the item of a one-key lease, the common case, so that the
	// lease takes one allocation.
	one [1]leaseItem
	gen uint64 // see Machine.gen
}

type leaseItem struct {
	key   string
	limit uint32 // the key's limit id at grant time
	// entry is where the key's entry was when last seen, checked before use:
	// a hint that saves a key lookup, not state (snapshots leave it out, so
	// it may change while a Capture holds the lease).
	entry   uint32
	granted int64
	span    limiter.Span // sliding windows only
	// hold is the lease's client's count of live leases on the key, the
	// value in Machine.held, so that ending the lease needs no lookup.
	// Derived, like held.
	hold *int32
}

// entryOf returns the index in entries of the item's key, or -1 if the key does
// not exist (it was deleted since the grant).
func (m *Machine) entryOf(it *leaseItem) int {
	if i := int(it.entry); i < len(m.entries) && m.entries[i].key == it.key {
		return i
	}
	i := m.keys.findString(m.entries, it.key)
	if i >= 0 {
		it.entry = uint32(i)
	}
	return i
}

// grantLease records a lease over items, live until log time expires.
func (m *Machine) grantLease(client string, items []resolved, spans []limiter.Span, granted []ItemResult, expires int64) uint64 {
	l := m.newLease()
	l.id, l.client, l.expires, l.gen = m.nextLease, client, expires, m.gen
	if len(items) == 1 {
		l.items = l.one[:]
	} else {
		l.items = make([]leaseItem, len(items))
	}
	m.nextLease++
	for i := range items {
		e := &m.entries[items[i].index]
		hold := items[i].hold
		if hold == nil {
			hold = m.holdOf(lessee{e.key, client})
		}
		if *hold == 0 {
			e.meta += oneLessee
		}
		*hold++
		l.items[i] = leaseItem{key: e.key, limit: items[i].limit, entry: uint32(items[i].index),
			granted: granted[i].Granted, span: spans[i], hold: hold}
	}
	m.leases.put(l)
	m.expiries.push(expiry{at: expires, id: l.id})
	return l.id
}

// newLease returns a lease record to fill in: a spare one if there is one, so
// that granting a lease rarely allocates. Records are not replicated state;
// only their contents are.
func (m *Machine) newLease() *lease {
	n := len(m.spare)
	if n == 0 {
		return new(lease)
	}
	l := m.spare[n-1]
	m.spare[n-1] = nil
	m.spare = m.spare[:n-1]
	return l
}

// freeLease keeps an ended lease's record for reuse, unless as many are spare
// as are live: a burst of leases does not hold its memory forever, or a
// Capture may hold it. Nothing else refers to an ended lease (heap entries
// name leases by id), so its record is free.
func (m *Machine) freeLease(l *lease) {
	if l.gen != m.gen || len(m.spare) >= m.leases.len() {
		return
	}
	*l = lease{}
	m.spare = append(m.spare, l)
}

// ownLease replaces live lease l, which a Capture may hold, with a copy that
// the caller may change, and returns the copy.
func (m *Machine) ownLease(l *lease) *lease {
	c := &lease{id: l.id, client: l.client, expires: l.expires, gen: m.gen}
	if len(l.items) == 1 {
		c.one[0] = l.items[0]
		c.items = c.one[:]
	} else {
		c.items = slices.Clone(l.items)
	}
	m.leases.replace(c)
	return c
}

// endLease forgets a lease, returning any concurrency units it holds.
func (m *Machine) endLease(l *lease) {
	for i := range l.items {
		it := &l.items[i]
		j := m.entryOf(it)
		gone := m.unhold(it, l.client)
		if j < 0 {
			// The key was deleted: its lessee count waits in orphans.
			if !gone {
				continue
			}
			if n := m.orphans[it.key] - 1; n > 0 {
				m.orphans[it.key] = n
			} else {
				delete(m.orphans, it.key)
			}
			continue
		}
		e := &m.entries[j]
		if gone {
			e.meta -= oneLessee
		}
		if e.limit() != it.limit {
			continue // redefined since: refund nothing
		}
		if c := m.limits.get(it.limit); c.def.Algorithm == Concurrency {
			st := limiter.ConcurrencyState{Held: e.state}
			c.conc.Return(&st, it.granted)
			e.state = st.Held
		}
	}
	m.leases.del(l.id)
	m.freeLease(l)
}

// lessee is a client holding live leases on a key. A command without a
// client id has the empty client: all such leases on a key are one lessee.
type lessee struct{ key, client string }

// holdOf returns k's count of live leases, adding a count of 0 if k holds
// none: the caller is about to grant it one.
func (m *Machine) holdOf(k lessee) *int32 {
	h := m.held[k]
	if h == nil {
		h = new(int32)
		m.held[k] = h
	}
	return h
}

// unhold counts one lease of client on it's key less and reports whether
// that was the last: the client is no longer a lessee of the key.
func (m *Machine) unhold(it *leaseItem, client string) bool {
	if *it.hold--; *it.hold > 0 {
		return false
	}
	delete(m.held, lessee{it.key, client})
	return true
}

// expireLeases ends every lease whose life is over at the current log time, in
// order of (expiry, id). Released leases leave their heap entry behind, and
// so do extended ones (their later expiry has an entry of its own); such an
// entry is dropped here.
func (m *Machine) expireLeases() {
	for len(m.expiries) > 0 && m.expiries[0].at <= m.now {
		if l := m.leases.get(m.expiries.pop().id); l != nil && l.expires <= m.now {
			m.endLease(l)
		}
	}
}

// current returns the live lease whose expiry heap entry x is, or nil if x
// is an entry a Release or an Extend left behind. Every live lease has
// exactly one entry that is current, the one at its expiry: an Extend pushes
// the later expiry and leaves the earlier entry, so a lease's entries have
// distinct times.
func (t *leaseTable) current(x expiry) *lease {
	if l := t.get(x.id); l != nil && l.expires == x.at {
		return l
	}
	return nil
}

type expiry struct {
	at int64
	id uint64
}

func (a expiry) less(b expiry) bool {
	if a.at != b.at {
		return a.at < b.at
	}
	return a.id < b.id
}

// expiryHeap is a binary min-heap of lease expiries ordered by (at, id): a total
// order, so every replica pops the same lease first. It is typed rather than
// container/heap so pushes do not box their values.
type expiryHeap []expiry

func (h *expiryHeap) push(x expiry) {
	*h = append(*h, x)
	s := *h
	for i := len(s) - 1; i > 0; {
		p := (i - 1) / 2
		if !s[i].less(s[p]) {
			break
		}
		s[i], s[p] = s[p], s[i]
		i = p
	}
}

// pop removes the least expiry: the last element takes the root's place and
// sinks. It sinks bottom-up: the hole at the root moves down the path of
// smaller children to a leaf, then the element rises from there. That takes
// one comparison per level instead of two (the element, taken from the
// bottom, rarely rises far) and leaves the array exactly as the textbook
// sift-down would, which matters because snapshots record it: both put the
// element just above the first element on that path that is not less than it
// (an equal one is the same value, so its side does not show).
func (h *expiryHeap) pop() expiry {
	s := *h
	top := s[0]
	n := len(s) - 1
	x := s[n]
	s = s[:n]
	i := 0
	for {
		c := 2*i + 1
		if c >= n {
			break
		}
		if r := c + 1; r < n && s[r].less(s[c]) {
			c = r
		}
		s[i] = s[c]
		i = c
	}
	for i > 0 {
		p := (i - 1) / 2
		if !x.less(s[p]) {
			break
		}
		s[i] = s[p]
		i = p
	}
	if n > 0 {
		s[i] = x
	}
	*h = s
	return top
}
