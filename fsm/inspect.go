package fsm

import "strings"

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

// ListedKey is one key of a List: its name, limit, and whether the limit
// was set by SetLimit.
type ListedKey struct {
	Key    string
	Limit  Limit
	Pinned bool
}

// List returns, in byte order, up to n keys that begin with prefix and
// sort after after (the last key of the previous page; "" for the first),
// only those whose limit was set by SetLimit if pinnedOnly; and whether
// more keys match after the last one returned. It is a read: it changes
// nothing. It reads the keys in order from the cursor (Machine.order), so
// a page costs its keys and a descent of the tree, not every key held.
func (m *Machine) List(prefix, after string, n int, pinnedOnly bool) (keys []ListedKey, more bool) {
	if n <= 0 {
		return nil, false
	}
	idx, more := m.smallestMatching(prefix, after, n, pinnedOnly)
	keys = make([]ListedKey, len(idx))
	for k, i := range idx {
		e := &m.entries[i]
		keys[k] = ListedKey{Key: e.key, Limit: m.limits.get(e.limit()).def, Pinned: e.pinned()}
	}
	return keys, more
}

// smallestMatching returns the indexes in entries of the first n keys, in
// byte order, that begin with prefix and sort after after (only pinned
// ones if pinnedOnly), in that order, and whether more keys match. It
// walks the keys in order from the first that could match, stopping past
// the n+1st match or the prefix's last key.
func (m *Machine) smallestMatching(prefix, after string, n int, pinnedOnly bool) (idx []int, more bool) {
	m.order.ascend(max(prefix, after), func(i int) bool {
		e := &m.entries[i]
		switch {
		case e.key == after:
			return true
		case !strings.HasPrefix(e.key, prefix):
			return false
		case pinnedOnly && !e.pinned():
			return true
		case len(idx) == n:
			more = true
			return false
		}
		idx = append(idx, i)
		return true
	})
	return idx, more
}

// HasSession reports whether the machine keeps a session (a dedup table) for
// clientID: a command from it adds none. A session past SessionTTL that
// the idle sweep has not reached yet is still kept. It is a read: it
// changes nothing, and costs one map lookup.
func (m *Machine) HasSession(clientID string) bool {
	_, ok := m.sessions[clientID]
	return ok
}
