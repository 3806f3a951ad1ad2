package fsm

import (
	"container/heap"
	"strings"
)

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
// nothing. It visits every key once, keeping the n+1 smallest that match
// in a heap: about 3 ms per 100k keys held for n = 1000 (BenchmarkList),
// so callers should page with n in the hundreds or thousands and not call
// it per request.
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
// visits every key once, keeping the n+1 smallest in a heap.
func (m *Machine) smallestMatching(prefix, after string, n int, pinnedOnly bool) (idx []int, more bool) {
	h := &largest{entries: m.entries}
	for i := range m.entries {
		e := &m.entries[i]
		k := e.key
		if k <= after || !strings.HasPrefix(k, prefix) || pinnedOnly && !e.pinned() {
			continue
		}
		switch {
		case len(h.idx) <= n:
			heap.Push(h, i)
		case k < m.entries[h.idx[0]].key:
			h.idx[0] = i
			heap.Fix(h, 0)
		}
	}
	if more = len(h.idx) > n; more {
		heap.Pop(h) // the n+1st: it only says there is more
	}
	idx = make([]int, len(h.idx))
	for k := len(idx) - 1; k >= 0; k-- {
		idx[k] = heap.Pop(h).(int)
	}
	return idx, more
}

// largest is a max-heap of indexes into entries, by key: the n+1 smallest
// keys so far of List or DeleteLimits, the largest of them on top.
type largest struct {
	entries []entry
	idx     []int
}

func (h *largest) Len() int           { return len(h.idx) }
func (h *largest) Less(i, j int) bool { return h.entries[h.idx[i]].key > h.entries[h.idx[j]].key }
func (h *largest) Swap(i, j int)      { h.idx[i], h.idx[j] = h.idx[j], h.idx[i] }
func (h *largest) Push(x any)         { h.idx = append(h.idx, x.(int)) }
func (h *largest) Pop() any {
	x := h.idx[len(h.idx)-1]
	h.idx = h.idx[:len(h.idx)-1]
	return x
}

// HasSession reports whether the machine keeps a session (a dedup table) for
// clientID: a command from it adds none. A session past SessionTTL that
// the idle sweep has not reached yet is still kept. It is a read: it
// changes nothing, and costs one map lookup.
func (m *Machine) HasSession(clientID string) bool {
	_, ok := m.sessions[clientID]
	return ok
}
