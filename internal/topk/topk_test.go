package topk

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

// TestSpaceSavingGuarantee checks the summary against exact counts over a
// skewed random stream: every key heavier than total/k is tracked, and each
// tracked key's weight is within [true, true+Err].
func TestSpaceSavingGuarantee(t *testing.T) {
	for _, seed := range []uint64{1, 2, 3} {
		r := rand.New(rand.NewPCG(seed, 0))
		const k = 32
		s := New(k)
		exact := map[string]float64{}
		z := rand.NewZipf(r, 1.2, 1, 5000)
		total := 0.0
		for range 200_000 {
			key := fmt.Sprintf("tenant-%d:gpt", z.Uint64())
			s.Add([]byte(key), 1, 1, 0)
			exact[key]++
			total++
		}
		tracked := map[string]Entry{}
		s.Each(func(e *Entry) { tracked[e.Key] = *e })
		for key, w := range exact {
			if w > total/k {
				if _, ok := tracked[key]; !ok {
					t.Errorf("seed %d: %s (weight %v > %v) is not tracked", seed, key, w, total/k)
				}
			}
		}
		for key, e := range tracked {
			if e.Weight < exact[key] || e.Weight > exact[key]+e.Err {
				t.Errorf("seed %d: %s weight %v, err %v; true %v", seed, key, e.Weight, e.Err, exact[key])
			}
			if float64(e.Admitted) > exact[key] {
				t.Errorf("seed %d: %s admitted %d > true %v", seed, key, e.Admitted, exact[key])
			}
		}
	}
}

func TestTopOrderAndSearch(t *testing.T) {
	s := New(4)
	for i, key := range []string{"a:x", "b:y", "c:x", "d:y"} {
		s.Add([]byte(key), float64(i+1), uint64(i+1), 0)
	}
	keys := func(es []Entry) []string {
		var out []string
		for _, e := range es {
			out = append(out, e.Key)
		}
		return out
	}
	if got := keys(s.Top(nil, 3, "")); fmt.Sprint(got) != "[d:y c:x b:y]" {
		t.Errorf("Top 3 = %v", got)
	}
	if got := keys(s.Top(nil, 10, ":x")); fmt.Sprint(got) != "[c:x a:x]" {
		t.Errorf("Top :x = %v", got)
	}
	// A newcomer in a full set replaces the least and inherits its weight.
	s.Add([]byte("e:z"), 0.5, 1, 0)
	top := s.Top(nil, 10, "")
	if len(top) != 4 {
		t.Fatalf("len %d", len(top))
	}
	var e Entry
	for _, x := range top {
		if x.Key == "e:z" {
			e = x
		}
		if x.Key == "a:x" {
			t.Error("a:x, the least, was not replaced")
		}
	}
	if e.Weight != 1.5 || e.Err != 1 || e.Admitted != 1 {
		t.Errorf("newcomer = %+v; want weight 1.5, err 1, admitted 1", e)
	}
}

func TestDecayRanksRecentActivity(t *testing.T) {
	s := New(2)
	s.Add([]byte("old"), 1000, 1000, 0)
	for range 20 {
		s.Decay(0.5)
	}
	s.Add([]byte("new"), 10, 10, 0)
	if top := s.Top(nil, 1, ""); top[0].Key != "new" {
		t.Errorf("after decay the busiest is %q; want new", top[0].Key)
	}
}

func TestHeapInvariant(t *testing.T) {
	r := rand.New(rand.NewPCG(9, 9))
	s := New(16)
	for i := range 10_000 {
		s.Add([]byte(fmt.Sprint(r.IntN(100))), r.Float64()*10, 1, 0)
		if i%100 == 0 {
			s.Decay(0.9)
		}
		for j := 1; j < len(s.heap); j++ {
			if s.heap[j].Weight < s.heap[(j-1)/2].Weight || s.heap[j].pos != j {
				t.Fatalf("heap broken at %d after %d adds", j, i)
			}
		}
	}
	if s.Len() != 16 || len(s.index) != 16 {
		t.Errorf("tracks %d keys, indexes %d; want 16", s.Len(), len(s.index))
	}
}

func TestAddTrackedKeyAllocatesNothing(t *testing.T) {
	s := New(8)
	key := []byte("tenant:model")
	s.Add(key, 1, 1, 0)
	if n := testing.AllocsPerRun(1000, func() { s.Add(key, 1, 1, 0) }); n != 0 {
		t.Errorf("Add of a tracked key allocates %v times", n)
	}
}

func BenchmarkAddHotKey(b *testing.B) {
	s := New(256)
	for i := range 256 {
		s.Add(fmt.Appendf(nil, "k%d", i), 1, 1, 0)
	}
	key := []byte("k7")
	b.ReportAllocs()
	for b.Loop() {
		s.Add(key, 1, 1, 0)
	}
}
