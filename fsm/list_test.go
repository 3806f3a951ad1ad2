package fsm

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"
)

// Property: List pages through exactly the keys a sort-and-filter model
// gives (prefix, after, pinned only), in byte order, each with its limit
// and pin, and says more exactly when the model has keys past the page;
// paging from each page's last key visits every matching key once.
func TestListMatchesModel(t *testing.T) {
	for seed := range uint64(50) {
		rng := rand.New(rand.NewPCG(seed, 3))
		r := newRig(t)
		model := map[string]ListedKey{}
		for range 1 + rng.IntN(300) {
			key := fmt.Sprintf("%c/%d", 'a'+rng.IntN(3), rng.IntN(1000))
			l := Limit{Algorithm: TokenBucket, Limit: 1 + rng.Int64N(100), Period: time.Minute}
			if rng.IntN(2) == 0 {
				r.setLimit(key, l)
				model[key] = ListedKey{Key: key, Limit: l, Pinned: true}
				continue
			}
			// A client's acquire defines the key only if it has no limit.
			if _, ok := model[key]; !ok {
				model[key] = ListedKey{Key: key, Limit: l}
			}
			r.apply(&Acquire{Items: []Item{{Key: key, Count: 1, Limit: &l}}}) // a denial, if the key is empty
		}
		for _, k := range []string{"a/1", "b/2", "c/3"} { // deleted: not listed
			r.ok(&DeleteLimit{Key: k})
			delete(model, k)
		}
		for key, k := range model {
			// As the machine keeps it: defaults filled in.
			l, pinned, ok := r.m.Lookup(key)
			if !ok || pinned != k.Pinned || l.Limit != k.Limit.Limit {
				t.Fatalf("seed %d: Lookup(%q) = %+v, %v, %v; want limit %d, pinned %v", seed, key, l, pinned, ok, k.Limit.Limit, k.Pinned)
			}
			model[key] = ListedKey{Key: key, Limit: l, Pinned: pinned}
		}
		for range 20 {
			prefix := []string{"", "a", "b/", "c/9", "z"}[rng.IntN(5)]
			pinned := rng.IntN(2) == 0
			n := 1 + rng.IntN(40)
			var want []ListedKey
			for _, k := range model {
				if strings.HasPrefix(k.Key, prefix) && (!pinned || k.Pinned) {
					want = append(want, k)
				}
			}
			slices.SortFunc(want, func(a, b ListedKey) int { return strings.Compare(a.Key, b.Key) })
			var got []ListedKey
			after := ""
			for page := 0; ; page++ {
				keys, more := r.m.List(prefix, after, n, pinned)
				if len(keys) > n {
					t.Fatalf("seed %d: a page of %d keys, asked for %d", seed, len(keys), n)
				}
				got = append(got, keys...)
				if wantMore := len(got) < len(want); more != wantMore {
					t.Fatalf("seed %d: prefix %q pinned %v n %d page %d: more = %v with %d of %d listed",
						seed, prefix, pinned, n, page, more, len(got), len(want))
				}
				if !more {
					break
				}
				after = keys[len(keys)-1].Key
			}
			for i := range max(len(got), len(want)) {
				if i >= len(got) || i >= len(want) || got[i] != want[i] {
					t.Fatalf("seed %d: prefix %q pinned %v n %d: %d keys listed, want %d; first difference at %d",
						seed, prefix, pinned, n, len(got), len(want), i)
				}
			}
		}
	}
}

// BenchmarkList is one page of 100 keys (ListLimits' default) and of 1000
// (the most, which `leasehold limits list` asks for), paging through a
// machine holding 100k, 1M and 2M (the default key cap) keys: the time
// List holds the machine (for a node, the state machine's lock).
func BenchmarkList(b *testing.B) {
	for _, held := range []int{100_000, 1_000_000, 2_000_000} {
		b.Run(fmt.Sprint(held), func(b *testing.B) {
			r := benchHeldKeys(b, held)
			for _, page := range []int{100, 1000} {
				b.Run(fmt.Sprint(page), func(b *testing.B) { benchmarkList(b, r.m, page) })
			}
		})
	}
}

func benchmarkList(b *testing.B, m *Machine, page int) {
	after := ""
	for b.Loop() {
		keys, more := m.List("", after, page, false)
		if !more {
			after = ""
			continue
		}
		after = keys[len(keys)-1].Key
	}
}
