package fsm

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// TestFairShare steps through grantOne's split of a key among its lessees
// and the pace it asks of a grant that falls short: each row sets up other
// clients' leases, then client "me" asks for Count 1 (or Count) up to Want.
func TestFairShare(t *testing.T) {
	// hot refills 1000/s and holds 1000: a lease's life of 2s refills a
	// whole bucket, F = 1000.
	hot := Limit{Algorithm: TokenBucket, Limit: 1000, Period: time.Second, MaxLease: 2 * time.Second}
	// deep refills 10/s and holds 1000: F = 20 over a 2s lease.
	deep := Limit{Algorithm: TokenBucket, Limit: 10, Period: time.Second, Burst: 1000, MaxLease: 2 * time.Second}
	// win admits 1000 in any 1s window: leases of at most 1s, F = 1000.
	win := Limit{Algorithm: SlidingWindow, Limit: 1000, Period: time.Second, Slots: 10}
	conc := Limit{Algorithm: Concurrency, Limit: 10}

	lease := func(client string, seq uint64, count int64) *Acquire {
		return &Acquire{ClientID: client, Seq: seq, Items: []Item{{Key: "k", Count: count}}, TTL: 2 * time.Second}
	}
	tests := []struct {
		name   string
		limit  Limit
		before []*Acquire    // applied at rigStart
		wait   time.Duration // then this much log time passes
		count  int64         // 0 means 1
		want   int64         // the asking client's Want
		ttl    time.Duration // asked for
		grant  int64         // granted to the asking client
		pace   time.Duration // its RetryAfter
	}{
		{name: "lone client gets its want", limit: hot, want: 600, ttl: 2 * time.Second, grant: 600},
		{name: "lone client wanting more than the stock is paced until the bucket refills",
			limit: hot, want: 2000, ttl: 2 * time.Second, grant: 1000, pace: time.Second},
		{name: "low stock: a share of the refill, paced until a refill's worth is back",
			limit: hot, before: []*Acquire{lease("a", 1, 1000)}, wait: 100 * time.Millisecond,
			want: 1000, ttl: 2 * time.Second, grant: 100, pace: time.Second},
		{name: "clients, not leases: three leases of one client are one lessee",
			limit: hot, before: []*Acquire{lease("a", 1, 1), lease("a", 2, 1), lease("a", 3, 1)},
			// 996 left after the count, 2 lessees: max(996/2, ⌈1000/2⌉)
			// = 500 more. Counting leases it would be ⌈1000/4⌉ = 250.
			want: 1000, ttl: 2 * time.Second, grant: 501,
			// To hold max(F, 2·501) = 1002, at most the burst 1000,
			// again the bucket needs 504 more tokens: 504ms.
			pace: 504 * time.Millisecond},
		{name: "the asking client's own leases do not shrink its share",
			limit: hot, before: []*Acquire{lease("me", 1, 1), lease("me", 2, 1)},
			want: 900, ttl: 2 * time.Second, grant: 900},
		{name: "deep stock: a share of the stock, paced at most one lease life",
			limit: deep, before: []*Acquire{lease("a", 1, 1)},
			// 998 left, 2 lessees: 499 more; holding 2·500 again takes
			// 50.1s, capped at the lease's 2s.
			want: 1000, ttl: 2 * time.Second, grant: 500, pace: 2 * time.Second},
		{name: "central grant: no refill share and no pace",
			limit: hot, before: []*Acquire{lease("a", 1, 900)}, wait: 0,
			// 99 left after the count, 2 lessees: 49 more.
			want: 1000, grant: 50},
		{name: "count alone: no share, no pace",
			limit: hot, before: []*Acquire{lease("a", 1, 999)},
			want: 1, ttl: 2 * time.Second, grant: 1},
		{name: "concurrency: a share of the free units, no pace",
			limit: conc, before: []*Acquire{lease("a", 1, 4)},
			// 5 free after the count, 2 lessees: 2 more.
			want: 10, ttl: 2 * time.Second, grant: 3},
		{name: "sliding window: a share of the refill, paced at most one lease life",
			limit: win, before: []*Acquire{{ClientID: "a", Seq: 1, Items: []Item{{Key: "k", Count: 900}}, TTL: time.Second}},
			want: 1000, ttl: time.Second, grant: 100, pace: time.Second},
		{name: "a count that does not fit is denied with the time it will",
			limit: hot, before: []*Acquire{lease("a", 1, 1000)}, wait: 10 * time.Millisecond,
			count: 20, want: 1000, ttl: 2 * time.Second, grant: 0, pace: 10 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newRig(t)
			r.setLimit("k", tt.limit)
			for _, a := range tt.before {
				r.ok(a)
			}
			r.advance(tt.wait)
			count := max(tt.count, 1)
			res := r.apply(&Acquire{ClientID: "me", Seq: 10, Items: []Item{{Key: "k", Count: count, Want: tt.want}}, TTL: tt.ttl})
			got := struct {
				Granted int64
				Pace    time.Duration
			}{res.Items[0].Granted, res.RetryAfter}
			want := struct {
				Granted int64
				Pace    time.Duration
			}{tt.grant, tt.pace}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("acquire (-want +got):\n%s\nresult: %+v", diff, res)
			}
		})
	}
}

// TestFairSharePaceIsTheLongestItem: an acquire of several keys is paced by
// the item that needs the longest wait.
func TestFairSharePaceIsTheLongestItem(t *testing.T) {
	r := newRig(t)
	hot := Limit{Algorithm: TokenBucket, Limit: 1000, Period: time.Second, MaxLease: 2 * time.Second}
	r.setLimit("full", hot)
	r.setLimit("short", hot)
	r.ok(&Acquire{ClientID: "a", Seq: 1, Items: []Item{{Key: "short", Count: 1000}}, TTL: 2 * time.Second})
	r.advance(100 * time.Millisecond)
	res := r.ok(&Acquire{ClientID: "me", Seq: 1, TTL: 2 * time.Second,
		Items: []Item{{Key: "full", Count: 1, Want: 10}, {Key: "short", Count: 1, Want: 1000}}})
	if res.Items[0].Granted != 10 || res.Items[1].Granted != 100 || res.RetryAfter != time.Second {
		t.Errorf("granted %d and %d, paced %v; want 10 and 100, paced 1s", res.Items[0].Granted, res.Items[1].Granted, res.RetryAfter)
	}
}
