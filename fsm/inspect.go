package fsm

// KeyInfo is what the machine holds about one key, for operators' views.
type KeyInfo struct {
	// Limit is the key's limit definition.
	Limit Limit
	// Pinned reports whether the limit was set by SetLimit rather than by
	// a client's acquire.
	Pinned bool
	// Lessees is the number of clients holding a live lease on the key.
	Lessees int
}

// KeyInfo returns what the machine holds about key. It is a read: it
// changes nothing, and costs one key lookup.
func (m *Machine) KeyInfo(key string) (KeyInfo, bool) {
	i := m.keys.findString(m.entries, key)
	if i < 0 {
		return KeyInfo{}, false
	}
	e := &m.entries[i]
	return KeyInfo{Limit: m.limits.get(e.limit()).def, Pinned: e.pinned(), Lessees: int(e.lessees())}, true
}

// LeaseTotal counts the live leases on one key and the tokens granted in them.
type LeaseTotal struct {
	Leases int
	Tokens int64
}

// CountLeases adds to keys[k], for each key k in keys, the live leases that
// include k and the tokens they were granted for it. Leases past their
// expiry in log time are not counted, even before Apply has ended them. It
// is a read: it changes nothing, and visits every live lease once (about a
// millisecond per 300k leases), so callers should not call it per request.
// The result does not depend on the order the leases are visited in.
func (m *Machine) CountLeases(keys map[string]*LeaseTotal) {
	if len(keys) == 0 || m.leases.len() == 0 {
		return
	}
	for _, l := range m.leases.slots {
		if l == nil || l.expires <= m.now {
			continue
		}
		for i := range l.items {
			if t := keys[l.items[i].key]; t != nil {
				t.Leases++
				t.Tokens += l.items[i].granted
			}
		}
	}
}
