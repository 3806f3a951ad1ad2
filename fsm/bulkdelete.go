package fsm

import "slices"

// deleteLimits applies a DeleteLimits: it picks, in one pass over every key,
// the first MaxDeleteExamined keys in byte order that begin with the prefix
// and sort after the cursor, and forgets those it may as deleteLimit does.
// The keys it picks depend only on the keys and their order in bytes, and
// it forgets them in descending entry index, which the replicated order of
// entries fixes, so every replica ends with the same entries in the same
// order.
func (m *Machine) deleteLimits(d *decoder) Result {
	if len(d.key) > MaxKeyLen || len(d.startAfter) > MaxKeyLen {
		return invalid(StatusInvalidKey, "prefix and start after are at most %d bytes; got %d and %d",
			MaxKeyLen, len(d.key), len(d.startAfter))
	}
	picked, more := m.smallestMatching(string(d.key), string(d.startAfter), MaxDeleteExamined, false)
	out := &Deleted{More: more}
	if len(picked) > 0 {
		out.LastKey = m.entries[picked[len(picked)-1]].key
	}
	doomed := picked[:0]
	for _, i := range picked {
		if !d.unpinned || !m.entries[i].pinned() {
			doomed = append(doomed, i)
		}
	}
	m.detachLeases(doomed)
	// Removing the highest index first: the entry that moves into a hole
	// is always one that stays.
	slices.Sort(doomed)
	for _, i := range slices.Backward(doomed) {
		m.removeKey(i)
	}
	out.Keys = len(doomed)
	return Result{Status: StatusOK, Deleted: out}
}

// detachLeases does for the keys of entries[doomed] what relabelLeases(e,
// 0, 0) does for one, in one walk of the live leases rather than one per
// key: their items refund nothing into a key created again.
func (m *Machine) detachLeases(doomed []int) {
	var leased map[string]bool
	for _, i := range doomed {
		if e := &m.entries[i]; e.lessees() > 0 {
			if leased == nil {
				leased = make(map[string]bool)
			}
			leased[e.key] = true
		}
	}
	if leased == nil {
		return
	}
	for _, x := range m.expiries {
		l := m.leases.current(x)
		if l == nil {
			continue
		}
		for i := range l.items {
			if !leased[l.items[i].key] || l.items[i].limit == 0 {
				continue
			}
			if l.gen != m.gen {
				l = m.ownLease(l) // a Capture may hold it
			}
			l.items[i].limit = 0
		}
	}
}
