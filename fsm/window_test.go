package fsm

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// pacedWindow admits 210 in any second, counted in 20 buckets of 50ms: each
// bucket's cap is ⌈210/21⌉ = 10. At rigStart (1000s) bucket 20000 begins.
var pacedWindow = Limit{Algorithm: SlidingWindow, Limit: 210, Period: time.Second, Slots: 10, Buckets: 20, MaxLease: 500 * time.Millisecond}

const ms = int64(time.Millisecond)

// pacedView is what a test compares of a paced acquire's result.
type pacedView struct {
	Status     Status
	Granted    int64
	Pieces     int32
	Piece      time.Duration
	TTL        time.Duration
	RetryAfter time.Duration
	Lessees    int32
}

func viewOf(r Result) pacedView {
	v := pacedView{Status: r.Status, Pieces: r.Pieces, Piece: r.Piece, TTL: r.TTL, RetryAfter: r.RetryAfter, Lessees: r.Lessees}
	if len(r.Items) == 1 {
		v.Granted = r.Items[0].Granted
	}
	return v
}

func paced(client string, seq uint64, count, want int64, ttl time.Duration, after int64) *Acquire {
	return &Acquire{ClientID: client, Seq: seq, Items: []Item{{Key: "w", Count: count, Want: want}}, TTL: ttl, Paced: true, PacedAfter: after}
}

// booked returns what bucket k of key w holds.
func (r *rig) booked(k int64) int64 {
	i := r.m.keys.findString(r.m.entries, "w")
	if i < 0 {
		return 0
	}
	ws := r.m.windows["w"]
	if ws == nil {
		return 0
	}
	return r.m.limits.get(r.m.entries[i].limit()).window.Booked(&ws.WindowState, r.now, k)
}

// TestPacedLease steps through grantPieces: which buckets a paced lease
// gets, how much in each, its pace, what a client that asks too early or
// finds every bucket taken gets, and what a release gives back.
func TestPacedLease(t *testing.T) {
	r := newRig(t)
	r.setLimit("w", pacedWindow)
	step := func(name string, c Command, want pacedView) Result {
		t.Helper()
		res := r.apply(c)
		if diff := cmp.Diff(want, viewOf(res)); diff != "" {
			t.Errorf("%s (-want +got):\n%s", name, diff)
		}
		return res
	}
	const b0 = 20000 // bucket of rigStart

	// a alone, at 1000.010s: a life of 500ms ends in bucket 20010, so the
	// lease is buckets 20000..20010, until 1000.550s. Alone, a gets each
	// bucket's cap, 10 a piece: 110. It asked 1000 over 500ms, 100 a
	// bucket: short, so paced until its last piece begins, 1000.500s.
	r.advance(10 * time.Millisecond)
	step("a alone", paced("a", 1, 1, 1000, 500*time.Millisecond, 0),
		pacedView{Status: StatusOK, Granted: 110, Pieces: 11, Piece: 50 * time.Millisecond, TTL: 540 * time.Millisecond,
			RetryAfter: 490 * time.Millisecond, Lessees: 1})
	for k := int64(b0); k <= b0+10; k++ {
		if got := r.booked(k); got != 10 {
			t.Fatalf("bucket %d holds %d, want 10", k, got)
		}
	}

	// b finds every bucket of its life at the cap: refused until the next
	// bucket, and counted as a lessee from now on (a claim).
	step("b refused", paced("b", 1, 1, 1000, 500*time.Millisecond, 0),
		pacedView{Status: StatusDenied, RetryAfter: 40 * time.Millisecond, Lessees: 2})
	step("b is a lessee", paced("c", 1, 1, 1000, 500*time.Millisecond, 0),
		pacedView{Status: StatusDenied, RetryAfter: 40 * time.Millisecond, Lessees: 3})

	// a asks again at 1000.2s with a short life: its pieces reach bucket
	// 20010 already, so nothing would be new; refused until its last
	// piece begins, and no claim (it holds a lease).
	r.now = rigStart + 200*ms
	step("a too early", paced("a", 2, 1, 1000, 300*time.Millisecond, rigStart+550*ms),
		pacedView{Status: StatusDenied, RetryAfter: 300 * time.Millisecond, Lessees: 3})

	// At 1000.5s a continues after 20010, to 20019 (until 1001s): 9
	// buckets, split three ways: ⌊10·9/3⌋ = 30, 3 a piece and one more in
	// the last three.
	r.now = rigStart + 500*ms
	cont := step("a continues", paced("a", 3, 1, 1000, 500*time.Millisecond, rigStart+550*ms),
		pacedView{Status: StatusOK, Granted: 30, Pieces: 9, Piece: 50 * time.Millisecond, TTL: 500 * time.Millisecond,
			RetryAfter: 450 * time.Millisecond, Lessees: 3})
	for k, want := range map[int64]int64{b0 + 10: 10, b0 + 11: 3, b0 + 16: 3, b0 + 17: 4, b0 + 19: 4} {
		if got := r.booked(k); got != want {
			t.Errorf("bucket %d holds %d, want %d", k, got, want)
		}
	}
	// b, now, gets 20011..20019 too (its life reaches 20019), a third.
	step("b gets its third", paced("b", 2, 1, 1000, 500*time.Millisecond, 0),
		pacedView{Status: StatusOK, Granted: 30, Pieces: 9, Piece: 50 * time.Millisecond, TTL: 500 * time.Millisecond,
			RetryAfter: 450 * time.Millisecond, Lessees: 3})

	// A modest client takes what its Want asks: 20 over 500ms is 2 a
	// bucket; granted in full, no pace.
	step("c modest", paced("c", 2, 1, 20, 500*time.Millisecond, 0),
		pacedView{Status: StatusOK, Granted: 18, Pieces: 9, Piece: 50 * time.Millisecond, TTL: 500 * time.Millisecond, Lessees: 3})

	// a gives back at 1000.7s (bucket 20014): what it did not spend of
	// 20014 (2 of 3) and 20015..20019 (3, 3, 4, 4, 4): 20. The last pieces
	// go first.
	r.now = rigStart + 700*ms
	before14 := r.booked(b0 + 14)
	r.ok(&Release{ClientID: "a", Seq: 4, LeaseID: cont.LeaseID, Unused: []int64{20}})
	if got := r.booked(b0 + 14); got != before14-2 {
		t.Errorf("bucket 20014 holds %d after the release, want %d", got, before14-2)
	}
	if got := r.booked(b0 + 19); got != 4+2 {
		t.Errorf("bucket 20019 holds %d after the release, want b's 4 and c's 2", got)
	}

	// Paced asks nothing of a central acquire, of one of several keys or
	// of a token bucket.
	r.setLimit("tb", Limit{Algorithm: TokenBucket, Limit: 100, Period: time.Second})
	for name, c := range map[string]*Acquire{
		"central": {ClientID: "d", Seq: 1, Items: []Item{{Key: "w", Count: 1}}, Paced: true},
		"two keys": {ClientID: "d", Seq: 2, Items: []Item{{Key: "w", Count: 1}, {Key: "tb", Count: 1}},
			TTL: 100 * time.Millisecond, Paced: true},
		"bucket": {ClientID: "d", Seq: 3, Items: []Item{{Key: "tb", Count: 1}}, TTL: 100 * time.Millisecond, Paced: true},
	} {
		if res := r.ok(c); res.Pieces != 0 || res.Piece != 0 {
			t.Errorf("%s: pieced: %+v", name, res)
		}
	}
}

// A paced lease lasts at least two buckets, at most a window, and ends with
// a bucket.
func TestPacedLeaseLife(t *testing.T) {
	tests := []struct {
		name    string
		at, ttl time.Duration // after rigStart
		max     time.Duration // the limit's MaxLease
		pieces  int32
		life    time.Duration
	}{
		{"a life within one bucket takes two", 10 * time.Millisecond, 20 * time.Millisecond, 500 * time.Millisecond, 2, 90 * time.Millisecond},
		{"rounded up to its bucket's end", 10 * time.Millisecond, 100 * time.Millisecond, 500 * time.Millisecond, 3, 140 * time.Millisecond},
		{"on a boundary", 0, 100 * time.Millisecond, 500 * time.Millisecond, 2, 100 * time.Millisecond},
		{"at most a window", 10 * time.Millisecond, time.Second, time.Second, 20, 990 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newRig(t)
			l := pacedWindow
			l.MaxLease = tt.max
			r.setLimit("w", l)
			r.advance(tt.at)
			res := r.ok(paced("a", 1, 1, 1, tt.ttl, 0))
			if res.Pieces != tt.pieces || res.TTL != tt.life {
				t.Errorf("%d pieces for %v, want %d for %v", res.Pieces, res.TTL, tt.pieces, tt.life)
			}
		})
	}
}
