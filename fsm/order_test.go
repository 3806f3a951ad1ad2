package fsm

import (
	"container/heap"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

// scanSmallestMatching is the oracle of smallestMatching, as it was before
// Machine.order: it returns the indexes in entries of the first n keys, in
// byte order, that begin with prefix and sort after after (only pinned
// ones if pinnedOnly), in that order, and whether more keys match. It
// visits every key once, keeping the n+1 smallest in a heap.
func scanSmallestMatching(m *Machine, prefix, after string, n int, pinnedOnly bool) (idx []int, more bool) {
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

// orderKeys is the key space of TestOrderMatchesEntries: keys that share
// prefixes with each other, so that cursors and prefixes fall inside,
// between and past them.
var orderKeys = func() []string {
	var keys []string
	for _, a := range []string{"a", "k", "k1", "k1/", "k\xff", "\xff"} {
		for _, b := range []string{"", "0", "1", "1/x", "\xff"} {
			keys = append(keys, a+b)
		}
	}
	return keys
}()

// Property: Machine.order holds exactly the keys of entries after every
// entry of a random stream (keys created by acquires and SetLimit, deleted
// one by one and in bulk, forgotten by the idle sweep), also on a machine
// restored from a snapshot, and smallestMatching, which List and
// DeleteLimits use, answers what the scan it replaced answers.
func TestOrderMatchesEntries(t *testing.T) {
	for _, seed := range streamSeeds(t) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			t.Logf("seed %d (replay with -fsm.seed=%d)", seed, seed)
			g := newStreamGen(seed)
			g.keys = orderKeys
			rng := rand.New(rand.NewPCG(seed, 7))
			sizes := map[int]bool{}
			for i := range 3000 {
				g.next()
				if i%50 == 49 { // the stream goes on from a restored machine
					g.m = restoreFrom(t, snapshotOf(t, g.m))
				}
				m := g.m
				checkOrder(t, i, m)
				sizes[len(m.entries)] = true
				for range 4 {
					prefix, after := orderProbe(rng, 2), orderProbe(rng, 4)
					n := []int{1, 2, 5, MaxDeleteExamined}[rng.IntN(4)]
					pinned := rng.IntN(3) == 0
					got, gotMore := m.smallestMatching(prefix, after, n, pinned)
					want, wantMore := scanSmallestMatching(m, prefix, after, n, pinned)
					if !slices.Equal(got, want) || gotMore != wantMore {
						t.Fatalf("entry %d: smallestMatching(%q, %q, %d, %v) = %v %v, the scan %v %v",
							i, prefix, after, n, pinned, got, gotMore, want, wantMore)
					}
				}
			}
			if len(sizes) < 10 {
				t.Errorf("the stream held only %d distinct key counts: it should create and forget keys", len(sizes))
			}
		})
	}
}

// checkOrder fails the test unless m.order holds exactly the keys of
// m.entries.
func checkOrder(t *testing.T, i int, m *Machine) {
	t.Helper()
	var ordered []string
	m.order.ascend("", func(i int) bool {
		ordered = append(ordered, m.entries[i].key)
		return true
	})
	var keys []string
	for _, e := range m.entries {
		keys = append(keys, e.key)
	}
	slices.Sort(keys)
	if !slices.Equal(ordered, keys) {
		t.Fatalf("entry %d: order holds %q, entries %q", i, ordered, keys)
	}
}

// orderProbe returns a random string of up to most bytes over the bytes
// orderKeys are made of.
func orderProbe(rng *rand.Rand, most int) string {
	const alphabet = "ak01/x\xff"
	b := make([]byte, rng.IntN(most+1))
	for i := range b {
		b[i] = alphabet[rng.IntN(len(alphabet))]
	}
	return string(b)
}
