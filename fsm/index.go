package fsm

import (
	"hash/maphash"
	"math/bits"
)

// keyIndex finds a key's position in Machine.entries. It is an open-addressing
// hash table of uint32 slots with linear probing, a power-of-two size and a load
// of at most 3/4; a key costs 5.3 to 10.7 bytes in it, against about 56 in a
// map[string]uint64 (see DESIGN.md, "Memory and eviction").
//
// A slot is 0 when empty. Otherwise its low b bits, where len(slots) = 2^b, hold
// the entry's index plus one (at most 3/4·2^b, so it fits), and its other 32-b
// bits hold a tag: the same bits of the key's hash's upper half. A probe
// compares the tag before it reads the entry, so a miss rarely touches entries
// or key bytes.
//
// The index holds only positions in entries, never keys: every method takes the
// entries it indexes, and the Machine keeps the two in step (insert after an
// append, remove and move around a swap-remove). Deletion shifts later slots of
// the cluster back rather than leaving tombstones, so probe lengths depend only
// on the keys present.
//
// The hash is seeded per index, at random. Nothing about the table (its seed,
// size or slot order) is replicated state: answers depend only on the keys and
// entries, the table is never iterated, snapshots do not contain it and Restore
// rebuilds it. Replicas with different seeds decide the same.
type keyIndex struct {
	slots []uint32
	n     int    // occupied slots
	low   uint32 // len(slots)-1: the bits of a slot holding index+1
	seed  maphash.Seed
	// shift is 0 in production. Tests set it to keep only the top 64-shift
	// bits of each hash, so that keys collide in position and tag.
	shift uint8
}

// indexMinSize is the table's size once a key is inserted.
const indexMinSize = 8

func (x *keyIndex) hashString(s string) uint64 { return maphash.String(x.seed, s) >> x.shift }
func (x *keyIndex) hashBytes(b []byte) uint64  { return maphash.Bytes(x.seed, b) >> x.shift }

// tag returns the tag bits of a slot for hash h.
func (x *keyIndex) tag(h uint64) uint32 { return uint32(h>>32) &^ x.low }

// findBytes returns the index in entries of key, or -1. It does not allocate.
func (x *keyIndex) findBytes(entries []entry, key []byte) int {
	if x.n == 0 {
		return -1
	}
	h := x.hashBytes(key)
	tag, mask := x.tag(h), uint64(x.low)
	for i := h & mask; ; i = (i + 1) & mask {
		s := x.slots[i]
		if s == 0 {
			return -1
		}
		if s&^x.low == tag {
			if j := int(s&x.low) - 1; entries[j].key == string(key) {
				return j
			}
		}
	}
}

// findString returns the index in entries of key, or -1.
func (x *keyIndex) findString(entries []entry, key string) int {
	if x.n == 0 {
		return -1
	}
	h := x.hashString(key)
	tag, mask := x.tag(h), uint64(x.low)
	for i := h & mask; ; i = (i + 1) & mask {
		s := x.slots[i]
		if s == 0 {
			return -1
		}
		if s&^x.low == tag {
			if j := int(s&x.low) - 1; entries[j].key == key {
				return j
			}
		}
	}
}

// insert indexes entries[x.n]: the index always holds entries[:x.n], so the
// Machine appends an entry and then inserts it. The key must not be indexed
// already. A full table doubles first, re-hashing every key.
func (x *keyIndex) insert(entries []entry) {
	if (x.n+1)*4 > len(x.slots)*3 {
		x.resize(entries, max(2*len(x.slots), indexMinSize))
	}
	x.put(x.hashString(entries[x.n].key), x.n)
	x.n++
}

// put stores index i at the first free slot from h's home.
func (x *keyIndex) put(h uint64, i int) {
	mask := uint64(x.low)
	p := h & mask
	for x.slots[p] != 0 {
		p = (p + 1) & mask
	}
	x.slots[p] = x.tag(h) | uint32(i+1)
}

// reserve makes room for n keys without growing; for Restore, which knows how
// many keys follow. It only ever grows the table.
func (x *keyIndex) reserve(entries []entry, n int) {
	size := indexMinSize
	for n*4 > size*3 {
		size *= 2
	}
	if size > len(x.slots) {
		x.resize(entries, size)
	}
}

// resize rebuilds the table with size slots, a power of two, re-hashing every
// indexed key: entries[:x.n].
func (x *keyIndex) resize(entries []entry, size int) {
	if uint64(size) > 1<<32 {
		panic("fsm: more keys than the key index can hold")
	}
	if len(x.slots) == 0 && x.seed == (maphash.Seed{}) {
		x.seed = maphash.MakeSeed()
	}
	x.slots = make([]uint32, size)
	x.low = uint32(size - 1)
	for i := range entries[:x.n] {
		x.put(x.hashString(entries[i].key), i)
	}
}

// slotOf returns the table position of the slot holding entries[i].
func (x *keyIndex) slotOf(entries []entry, i int) uint64 {
	mask, want := uint64(x.low), uint32(i+1)
	for p := x.hashString(entries[i].key) & mask; ; p = (p + 1) & mask {
		if x.slots[p]&x.low == want {
			return p
		}
	}
}

// remove forgets entries[i], which must be indexed. Later slots of its cluster
// shift back into the hole, so no lookup ever needs a tombstone.
func (x *keyIndex) remove(entries []entry, i int) {
	mask := uint64(x.low)
	hole := x.slotOf(entries, i)
	for p := (hole + 1) & mask; ; p = (p + 1) & mask {
		s := x.slots[p]
		if s == 0 {
			break
		}
		// s may fill the hole if the hole is on its probe path: at least
		// as far from p, going back, as s's home is.
		home := x.hashString(entries[int(s&x.low)-1].key) & mask
		if (p-home)&mask >= (p-hole)&mask {
			x.slots[hole] = s
			hole = p
		}
	}
	x.slots[hole] = 0
	x.n--
}

// move records that the entry at index from (still in entries[from]) moves to
// index to.
func (x *keyIndex) move(entries []entry, from, to int) {
	p := x.slotOf(entries, from)
	x.slots[p] = x.slots[p]&^x.low | uint32(to+1)
}

// leaseTable finds a live lease by id: the same open addressing as keyIndex
// (linear probing, power-of-two size, load at most 3/4, deletion by backward
// shift), over lease pointers. A lease's home is the top bits of its id, xored
// with a random key and multiplied by 2^64/φ: lease ids are consecutive, and
// Fibonacci hashing spreads consecutive ids evenly; the key keeps the layout
// unpredictable to clients, who choose which leases stay live.
//
// Like keyIndex it is not replicated state (Restore rebuilds it from the
// lease records) and Apply never iterates it; CountLeases, a read for
// operators' views, does, into sums that do not depend on the order.
type leaseTable struct {
	slots []*lease
	n     int
	shift uint8 // 64 - log2(len(slots))
	key   uint64
}

func (t *leaseTable) len() int { return t.n }

func (t *leaseTable) home(id uint64) uint64 {
	return ((id ^ t.key) * 0x9e3779b97f4a7c15) >> t.shift
}

// get returns the live lease with the given id, or nil.
func (t *leaseTable) get(id uint64) *lease {
	if t.n == 0 {
		return nil
	}
	mask := uint64(len(t.slots) - 1)
	for p := t.home(id); ; p = (p + 1) & mask {
		if l := t.slots[p]; l == nil || l.id == id {
			return l
		}
	}
}

// put adds l, whose id must not be in the table.
func (t *leaseTable) put(l *lease) {
	if (t.n+1)*4 > len(t.slots)*3 {
		t.resize(max(2*len(t.slots), indexMinSize))
	}
	t.place(l)
	t.n++
}

func (t *leaseTable) place(l *lease) {
	mask := uint64(len(t.slots) - 1)
	p := t.home(l.id)
	for t.slots[p] != nil {
		p = (p + 1) & mask
	}
	t.slots[p] = l
}

func (t *leaseTable) resize(size int) {
	if len(t.slots) == 0 && t.key == 0 {
		t.key = maphash.Comparable(maphash.MakeSeed(), uint64(0))
	}
	old := t.slots
	t.slots = make([]*lease, size)
	t.shift = uint8(64 - bits.TrailingZeros(uint(size)))
	for _, l := range old {
		if l != nil {
			t.place(l)
		}
	}
}

// replace puts l in the place of the lease with the same id, which must be in
// the table.
func (t *leaseTable) replace(l *lease) {
	mask := uint64(len(t.slots) - 1)
	p := t.home(l.id)
	for t.slots[p].id != l.id {
		p = (p + 1) & mask
	}
	t.slots[p] = l
}

// del removes the lease with the given id, which must be in the table.
func (t *leaseTable) del(id uint64) {
	mask := uint64(len(t.slots) - 1)
	hole := t.home(id)
	for t.slots[hole].id != id {
		hole = (hole + 1) & mask
	}
	for p := (hole + 1) & mask; ; p = (p + 1) & mask {
		l := t.slots[p]
		if l == nil {
			break
		}
		if home := t.home(l.id); (p-home)&mask >= (p-hole)&mask {
			t.slots[hole] = l
			hole = p
		}
	}
	t.slots[hole] = nil
	t.n--
}
