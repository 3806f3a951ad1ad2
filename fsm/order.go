package fsm

import "github.com/google/btree"

// keyOrder holds the positions in Machine.entries in the byte order of their
// keys, so that List and DeleteLimits start at their cursor and read only the
// keys they return, rather than visiting every key.
//
// Its items are entry positions, not keys: 4 bytes each rather than a 16-byte
// string header, and no pointers for the collector to scan. Comparing two
// items reads their entries' keys; a search for a string compares against
// probeItem, which stands for probe. The Machine keeps it in step with
// entries (insert after an append, remove and move around a swap-remove), as
// it does keyIndex. Not replicated state: Restore rebuilds it.
type keyOrder struct {
	tree  *btree.BTreeG[uint32]
	m     *Machine
	probe string
}

// orderDegree is the degree of keyOrder's B-tree: nodes of 31 to 63 items.
const orderDegree = 32

// probeItem is the item that stands for keyOrder.probe in a search.
const probeItem = ^uint32(0)

func newKeyOrder(m *Machine) *keyOrder {
	o := &keyOrder{m: m}
	o.tree = btree.NewG(orderDegree, o.less)
	return o
}

func (o *keyOrder) key(i uint32) string {
	if i == probeItem {
		return o.probe
	}
	return o.m.entries[i].key
}

func (o *keyOrder) less(a, b uint32) bool { return o.key(a) < o.key(b) }

// insert adds entries[i], whose key it does not hold.
func (o *keyOrder) insert(i int) { o.tree.ReplaceOrInsert(uint32(i)) }

// remove removes entries[i], before the entry is overwritten.
func (o *keyOrder) remove(i int) { o.tree.Delete(uint32(i)) }

// move makes the item of a key point at entries[to], once entries[to] holds
// that key's entry and before its old place is cleared: the item it replaces
// compares equal.
func (o *keyOrder) move(to int) { o.tree.ReplaceOrInsert(uint32(to)) }

// ascend calls f with the position of each key from the first at or after
// from, in byte order, until f returns false.
func (o *keyOrder) ascend(from string, f func(i int) bool) {
	o.probe = from
	o.tree.AscendGreaterOrEqual(probeItem, func(i uint32) bool { return f(int(i)) })
	o.probe = ""
}
