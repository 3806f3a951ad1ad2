package fsm

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"
)

// indexRig drives a keyIndex the way Machine does: entries are appended and
// then inserted, and removed by swapping the last entry in. A Go map is the
// model.
type indexRig struct {
	t       *testing.T
	x       keyIndex
	entries []entry
	model   map[string]int // key -> index in entries
}

func newIndexRig(t *testing.T, shift uint8) *indexRig {
	return &indexRig{t: t, x: keyIndex{shift: shift}, model: make(map[string]int)}
}

func (r *indexRig) add(key string) {
	r.t.Helper()
	if _, ok := r.model[key]; ok {
		r.t.Fatalf("add of %q, which is present", key)
	}
	r.model[key] = len(r.entries)
	r.entries = append(r.entries, entry{key: key})
	r.x.insert(r.entries)
}

// remove forgets entries[i] as Machine.removeKey does.
func (r *indexRig) remove(i int) {
	r.t.Helper()
	delete(r.model, r.entries[i].key)
	r.x.remove(r.entries, i)
	last := len(r.entries) - 1
	if i != last {
		r.x.move(r.entries, last, i)
		r.entries[i] = r.entries[last]
		r.model[r.entries[i].key] = i
	}
	r.entries[last] = entry{}
	r.entries = r.entries[:last]
}

// find looks key up both ways and checks that they agree with the model.
func (r *indexRig) find(key string) int {
	r.t.Helper()
	want, ok := r.model[key]
	if !ok {
		want = -1
	}
	if got := r.x.findString(r.entries, key); got != want {
		r.t.Fatalf("findString(%q) = %d, want %d", key, got, want)
	}
	if got := r.x.findBytes(r.entries, []byte(key)); got != want {
		r.t.Fatalf("findBytes(%q) = %d, want %d", key, got, want)
	}
	return want
}

// check verifies the table's invariants: it indexes exactly entries, within
// its load bound, and every slot is reachable from its home without crossing
// an empty slot (which backward-shift deletion must preserve).
func (r *indexRig) check() {
	r.t.Helper()
	x := &r.x
	if x.n != len(r.entries) || len(r.model) != len(r.entries) {
		r.t.Fatalf("index holds %d, entries %d, model %d", x.n, len(r.entries), len(r.model))
	}
	if len(x.slots) == 0 {
		if x.n != 0 {
			r.t.Fatalf("no table but %d keys", x.n)
		}
		return
	}
	if len(x.slots)&(len(x.slots)-1) != 0 || x.low != uint32(len(x.slots)-1) {
		r.t.Fatalf("table of %d slots, low %#x", len(x.slots), x.low)
	}
	if x.n*4 > len(x.slots)*3 {
		r.t.Fatalf("%d keys in %d slots: load above 3/4", x.n, len(x.slots))
	}
	mask := uint64(x.low)
	seen := make([]bool, len(r.entries))
	used := 0
	for p, s := range x.slots {
		if s == 0 {
			continue
		}
		used++
		i := int(s&x.low) - 1
		if i < 0 || i >= len(r.entries) || seen[i] {
			r.t.Fatalf("slot %d holds index %d (of %d), or twice", p, i, len(r.entries))
		}
		seen[i] = true
		h := x.hashString(r.entries[i].key)
		if s&^x.low != x.tag(h) {
			r.t.Fatalf("slot %d: tag %#x, want %#x", p, s&^x.low, x.tag(h))
		}
		for q := h & mask; q != uint64(p); q = (q + 1) & mask {
			if x.slots[q] == 0 {
				r.t.Fatalf("slot %d (key %q) cannot be reached from its home %d: slot %d is empty",
					p, r.entries[i].key, h&mask, q)
			}
		}
	}
	if used != x.n {
		r.t.Fatalf("%d slots used, n = %d", used, x.n)
	}
}

// Shifts for the index tests: the real hash, then hashes of 4 bits, 1 bit and
// none at all, so that keys share homes and tags and only the key comparison
// tells them apart.
var indexShifts = []uint8{0, 60, 63, 64}

func TestKeyIndexBasics(t *testing.T) {
	for _, shift := range indexShifts {
		t.Run(fmt.Sprint("shift ", shift), func(t *testing.T) {
			r := newIndexRig(t, shift)
			r.find("a") // an empty index
			r.check()
			for _, k := range []string{"a", "b", "c", "d", "e"} {
				r.add(k)
				r.check()
			}
			for _, k := range []string{"a", "b", "c", "d", "e", "f", "", "aa"} {
				r.find(k)
			}
			r.remove(0) // "e" moves to 0
			r.check()
			if i := r.find("e"); i != 0 {
				t.Fatalf(`"e" at %d after the swap, want 0`, i)
			}
			r.find("a")
			r.remove(3) // the last: nothing moves
			r.check()
			r.remove(1)
			r.check()
			for _, k := range []string{"a", "b", "c", "d", "e"} {
				r.find(k)
			}
			for len(r.entries) > 0 {
				r.remove(0)
				r.check()
			}
			r.add("a") // the table is reused once empty
			r.check()
			r.find("a")
		})
	}
}

func TestKeyIndexGrowth(t *testing.T) {
	r := newIndexRig(t, 0)
	sizes := map[int]bool{}
	for i := range 10_000 {
		r.add(fmt.Sprintf("tenant-%07d", i))
		sizes[len(r.x.slots)] = true
		if i%997 == 0 {
			r.check()
		}
	}
	r.check()
	// 10k keys at load <= 3/4: 16384 slots, reached by doubling from 8.
	if len(r.x.slots) != 16384 || len(sizes) != 12 {
		t.Errorf("%d slots after %d sizes, want 16384 after 12", len(r.x.slots), len(sizes))
	}
	for i := range 10_000 {
		r.find(fmt.Sprintf("tenant-%07d", i))
	}
	r.find("tenant-0010000")

	// reserve sizes a table once, as Restore does.
	var x keyIndex
	x.reserve(nil, 10_000)
	if len(x.slots) != 16384 {
		t.Errorf("reserve(10000): %d slots, want 16384", len(x.slots))
	}
}

// The index agrees with a map through random inserts, lookups and swap-removes,
// with few and many collisions.
func TestKeyIndexRandom(t *testing.T) {
	for _, shift := range indexShifts {
		t.Run(fmt.Sprint("shift ", shift), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(uint64(shift), 1))
			r := newIndexRig(t, shift)
			space := 2000
			if shift == 64 {
				space = 200 // every probe is a linear scan
			}
			for step := range 20_000 {
				key := fmt.Sprintf("k%d", rng.IntN(space))
				_, present := r.model[key]
				switch {
				case rng.IntN(3) == 0 && len(r.entries) > 0:
					r.remove(rng.IntN(len(r.entries)))
				case !present && rng.IntN(2) == 0:
					r.add(key)
				default:
					r.find(key)
				}
				if step%500 == 0 {
					r.check()
				}
			}
			r.check()
			for i := range space {
				r.find(fmt.Sprintf("k%d", i))
			}
		})
	}
}

func TestKeyIndexFindBytesDoesNotAllocate(t *testing.T) {
	r := newIndexRig(t, 0)
	for i := range 100 {
		r.add(fmt.Sprintf("tenant-%07d/model-x/requests", i))
	}
	hit, miss := []byte("tenant-0000042/model-x/requests"), []byte("tenant-0000420/model-x/requests")
	allocs := testing.AllocsPerRun(100, func() {
		if r.x.findBytes(r.entries, hit) != 42 || r.x.findBytes(r.entries, miss) != -1 {
			t.Fatal("wrong answer")
		}
	})
	if allocs != 0 {
		t.Errorf("findBytes allocates %v times per run", allocs)
	}
}

// Two indexes with different seeds give the same answers: the seed never
// reaches the machine's decisions.
func TestKeyIndexSeedDoesNotMatter(t *testing.T) {
	a, b := newIndexRig(t, 0), newIndexRig(t, 0)
	for i := range 1000 {
		k := fmt.Sprint("key-", i)
		a.add(k)
		b.add(k)
	}
	if a.x.seed == b.x.seed {
		t.Fatal("two indexes share a seed")
	}
	for i := range 1000 {
		a.remove(i * 7 % len(a.entries))
		b.remove(i * 7 % len(b.entries))
		if i%100 == 0 {
			for j := range 1200 {
				k := fmt.Sprint("key-", j)
				if a.find(k) != b.find(k) {
					t.Fatalf("%q found at different places", k)
				}
			}
		}
	}
}

// checkLeaseTable verifies the lease table against a model map.
func checkLeaseTable(t *testing.T, lt *leaseTable, model map[uint64]*lease) {
	t.Helper()
	if lt.len() != len(model) {
		t.Fatalf("table holds %d, model %d", lt.len(), len(model))
	}
	if lt.n*4 > len(lt.slots)*3 {
		t.Fatalf("%d leases in %d slots: load above 3/4", lt.n, len(lt.slots))
	}
	mask := uint64(len(lt.slots) - 1)
	used := 0
	for p, l := range lt.slots {
		if l == nil {
			continue
		}
		used++
		if model[l.id] != l {
			t.Fatalf("slot %d holds lease %d, which the model does not", p, l.id)
		}
		for q := lt.home(l.id); q != uint64(p); q = (q + 1) & mask {
			if lt.slots[q] == nil {
				t.Fatalf("lease %d in slot %d cannot be reached from its home", l.id, p)
			}
		}
	}
	if used != lt.n {
		t.Fatalf("%d slots used, n = %d", used, lt.n)
	}
	for id, l := range model {
		if lt.get(id) != l {
			t.Fatalf("get(%d) does not find its lease", id)
		}
	}
}

func TestLeaseTableRandom(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 5))
	var lt leaseTable
	model := make(map[uint64]*lease)
	if lt.get(1) != nil {
		t.Fatal("empty table finds a lease")
	}
	next := uint64(1)
	var live []uint64
	for step := range 50_000 {
		switch {
		case rng.IntN(5) < 3: // grant: ids are consecutive
			l := &lease{id: next}
			next++
			lt.put(l)
			model[l.id] = l
			live = append(live, l.id)
		case len(live) > 0: // end a random live lease
			i := rng.IntN(len(live))
			id := live[i]
			live[i] = live[len(live)-1]
			live = live[:len(live)-1]
			lt.del(id)
			delete(model, id)
		}
		if id := uint64(rng.IntN(int(next) + 10)); lt.get(id) != model[id] {
			t.Fatalf("get(%d) disagrees with the model", id)
		}
		if step%1000 == 0 {
			checkLeaseTable(t, &lt, model)
		}
	}
	checkLeaseTable(t, &lt, model)
}

// Leases whose ids share a home at every table size probe one long cluster;
// deletion from its middle must keep every one reachable.
func TestLeaseTableCollisions(t *testing.T) {
	var lt leaseTable
	lt.resize(indexMinSize) // draws the key, so homes can be computed
	lt.shift = 64 - 6       // homes in a table of 64 slots
	var ids []uint64
	for id := uint64(1); len(ids) < 40; id++ {
		if lt.home(id) == 17 {
			ids = append(ids, id)
		}
	}
	lt = leaseTable{key: lt.key}
	model := make(map[uint64]*lease)
	for _, id := range ids {
		l := &lease{id: id}
		lt.put(l)
		model[id] = l
		checkLeaseTable(t, &lt, model)
	}
	if len(lt.slots) != 64 {
		t.Fatalf("%d slots, want 64", len(lt.slots))
	}
	for _, i := range []int{20, 0, 39, 5, 6, 7} {
		lt.del(ids[i])
		delete(model, ids[i])
		checkLeaseTable(t, &lt, model)
	}
}

// A key deleted while leased keeps the count of its lessees for when it is
// created again: the fair share and the idle sweep see them, as they did when
// the counts lived in a map by key name. Restore rebuilds the same counts.
func TestLesseeCountsOutliveTheirKey(t *testing.T) {
	r := newRig(t)
	r.setLimit("k", bucket10)
	l1 := r.ok(&Acquire{ClientID: "c", Seq: 1, Items: []Item{{Key: "k", Count: 1}}, TTL: 2 * time.Second})
	r.ok(&Acquire{ClientID: "c", Seq: 2, Items: []Item{{Key: "k", Count: 1}}, TTL: time.Second})
	r.ok(&Acquire{ClientID: "d", Seq: 1, Items: []Item{{Key: "k", Count: 1}}, TTL: time.Second})
	r.ok(&DeleteLimit{Key: "k"})
	if n := r.m.lessees("k"); n != 2 || len(r.m.orphans) != 1 {
		t.Fatalf("deleted key: %d lessees, %d orphan counts; want 2 (c and d) and 1", n, len(r.m.orphans))
	}
	r.setLimit("k", bucket10)
	if n := r.m.lessees("k"); n != 2 || len(r.m.orphans) != 0 {
		t.Fatalf("re-created key: %d lessees, %d orphan counts; want 2 and 0", n, len(r.m.orphans))
	}
	// Fair share: 9 left after the count, 2 lessees, c one of them: c
	// gets 9/2 = 4 beyond its count. (Counting c's two leases and d's, it
	// would have got 9/4 = 2.)
	res := r.ok(&Acquire{ClientID: "c", Seq: 3, Items: []Item{{Key: "k", Count: 1, Want: 10}}, TTL: time.Second})
	if res.Items[0].Granted != 5 {
		t.Errorf("granted %d, want 1 + half of 9", res.Items[0].Granted)
	}
	if n := restoreFrom(t, snapshotOf(t, r.m)).lessees("k"); n != 2 {
		t.Errorf("restored: %d lessees, want 2", n)
	}
	r.ok(&Release{ClientID: "c", Seq: 4, LeaseID: l1.LeaseID})
	if n := r.m.lessees("k"); n != 2 {
		t.Errorf("c released one of its three leases: %d lessees, want still 2", n)
	}
	r.advance(time.Second)
	r.apply(&DeleteLimit{Key: "other"}) // expires the three 1s leases
	if n := r.m.lessees("k"); n != 0 || leasedKeys(r.m) != 0 || len(r.m.held) != 0 {
		t.Errorf("after every lease ended: %d lessees of k, %d keys leased, %d pairs held", n, leasedKeys(r.m), len(r.m.held))
	}
}

// Lease records are reused; an ended lease's id stays gone.
func TestLeaseRecordReuse(t *testing.T) {
	r := newRig(t)
	r.setLimit("k", bucket10)
	a := r.ok(&Acquire{ClientID: "c", Seq: 1, Items: []Item{{Key: "k", Count: 1}}, TTL: time.Second})
	r.ok(&Release{ClientID: "c", Seq: 2, LeaseID: a.LeaseID})
	b := r.ok(&Acquire{ClientID: "c", Seq: 3, Items: []Item{{Key: "k", Count: 2}}, TTL: time.Second})
	if res := r.apply(&Release{ClientID: "c", Seq: 4, LeaseID: a.LeaseID}); res.Status != StatusLeaseGone {
		t.Fatalf("second release of lease %d: %v, want lease-gone", a.LeaseID, res.Status)
	}
	l := r.m.leases.get(b.LeaseID)
	if l == nil || l.id != b.LeaseID || l.client != "c" || len(l.items) != 1 || l.items[0].granted != 2 {
		t.Fatalf("lease %d after its predecessor's record was reused: %+v", b.LeaseID, l)
	}
	// 10 - 1 + 1 - 2 = 8, and releasing b gives its 2 back.
	r.ok(&Release{ClientID: "c", Seq: 5, LeaseID: b.LeaseID})
	if got := r.remaining("k", 0); got != 10 {
		t.Errorf("k holds %d, want 10", got)
	}
}
