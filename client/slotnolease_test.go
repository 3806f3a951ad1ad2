package client_test

import (
	"context"
	"errors"
	"testing"
	"testing/synctest"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/leasehold/leasehold/client"
	"github.com/leasehold/leasehold/internal/clustertest"
	"github.com/leasehold/leasehold/transport"
	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

// wantRefusedBy fails unless err is a denial (ErrDenied) by the rule
// counting d.
func wantRefusedBy(t *testing.T, r client.Reservation, err error, d client.Dimension, when string) {
	t.Helper()
	var re *client.RuleError
	if !errors.As(err, &re) || re.Counts != d || !errors.Is(err, client.ErrDenied) {
		r.Cancel()
		t.Fatalf("%s: TryReserve = %v; want a denial by the %v rule", when, err, d)
	}
}

// TestBudgetInFlightBesideAKeyThatGrantsNoLeases: a Budget that caps the
// calls in flight and keeps a strict per-minute bucket, whose key the
// cluster keeps as one that grants no leases (reserve ⌈r·Λ⌉ at least its
// burst; defined first by an operator, first definition wins), admitted
// nothing: the reservation asked the InFlight slot and the bucket in one
// lease Acquire, which the cluster refuses (a concurrency key needs a
// lease; the strict bucket cuts the Acquire's TTL to 0), so every Reserve
// and TryReserve returned "invalid request: key "llm/in-flight" is a
// concurrency limit: it needs a lease TTL above 0, and no strict bucket in
// the same acquire", an error about a rule the caller had written right.
// On a real one-node cluster: the slot caps the calls in flight, the
// bucket its requests, and a reservation the bucket refuses gives its slot
// back.
func TestBudgetInFlightBesideAKeyThatGrantsNoLeases(t *testing.T) {
	_, endpoint := clustertest.Start(t)
	conn, err := grpc.NewClient(endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	api := pb.NewLeaseholdClient(conn)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	// 2 a minute, burst 2, strict, Λ 1 min: reserve ⌈2·1⌉ = 2, the whole
	// burst. A token refills in 30 s, far longer than the test takes.
	if _, err := api.SetLimit(ctx, &pb.SetLimitRequest{Key: "llm/requests", Limit: &pb.Limit{
		Algorithm: pb.Algorithm_TOKEN_BUCKET, Limit: 2, PeriodNs: int64(time.Minute), Burst: 2, Strict: true,
		MaxLeaseNs: int64(time.Minute)}}); err != nil {
		t.Fatal(err)
	}
	c, err := client.Dial(ctx, []string{endpoint}, client.WithInsecure())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	b := c.Budget("llm",
		client.Rule{Counts: client.Requests, Limit: client.Limit{Rate: 2, Per: time.Minute, Strict: true}},
		client.Rule{Counts: client.InFlight, Limit: client.Limit{Rate: 1}},
	)
	cost := client.Cost{Requests: 1}

	r, err := b.Reserve(ctx, cost)
	if err != nil {
		t.Fatalf("first Reserve = %v; want a reservation", err)
	}
	other, err := b.TryReserve(cost)
	wantRefusedBy(t, other, err, client.InFlight, "while the first is in flight")
	if err := r.Settle(ctx, cost); err != nil {
		t.Fatal(err)
	}
	r, err = b.TryReserve(cost)
	if err != nil {
		t.Fatalf("TryReserve once the first settled = %v; want a reservation", err)
	}
	if err := r.Settle(ctx, cost); err != nil {
		t.Fatal(err)
	}
	other, err = b.TryReserve(cost)
	wantRefusedBy(t, other, err, client.Requests, "with the bucket's 2 spent")

	// The slot of the reservation the bucket refused came back (or the
	// key, with no slot held, was forgotten: the limit sent makes it anew).
	resp, err := api.Acquire(ctx, &pb.AcquireRequest{ClientId: []byte("probe"), Seq: 1, TtlNs: int64(time.Second),
		Items: []*pb.AcquireItem{{Key: "llm/in-flight", Count: 1, Want: 1,
			Limit: &pb.Limit{Algorithm: pb.Algorithm_CONCURRENCY, Limit: 1, MaxLeaseNs: int64(10 * time.Second)}}}})
	if err != nil || !resp.GetAllowed() {
		t.Fatalf("the in-flight key's one slot after the refused reservation: %v, %v; want it free", resp, err)
	}
}

// TestBudgetInFlightSlotIsTakenBeforeACentralGrant: beside a key that
// grants no leases, a reservation takes its InFlight slot in an Acquire of
// its own (a lease, given back if the rest is refused) and then its other
// rules centrally (ttl 0, the longest span): in that order, since a
// central grant cannot be given back and a slot can. A reservation the
// slot refuses takes nothing from the bucket; one the bucket refuses
// holds no slot. The first reservation learns that the key grants no
// leases from the cluster's refusal of the slot beside it, which took
// nothing.
func TestBudgetInFlightSlotIsTakenBeforeACentralGrant(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 1)
		f.noLeaseKey(t, "s/requests", 2, time.Minute)
		c := f.dial(t)
		b := c.Budget("s",
			client.Rule{Counts: client.Requests, Limit: client.Limit{Rate: 2, Per: time.Minute}},
			client.Rule{Counts: client.InFlight, Limit: client.Limit{Rate: 1}},
		)
		cost := client.Cost{Requests: 1}

		r, err := b.Reserve(t.Context(), cost)
		if err != nil {
			t.Fatalf("first Reserve = %v; want a reservation", err)
		}
		other, err := b.TryReserve(cost)
		wantRefusedBy(t, other, err, client.InFlight, "while the first is in flight")
		if got := f.net("s/requests"); got != 1 {
			t.Errorf("requests granted with one reservation and one the slot refused = %d; want 1", got)
		}
		if err := r.Settle(t.Context(), cost); err != nil {
			t.Fatal(err)
		}
		if r, err = b.TryReserve(cost); err != nil {
			t.Fatalf("TryReserve once the first settled = %v; want a reservation", err)
		}
		if err := r.Cancel(); err != nil {
			t.Fatal(err)
		}
		synctest.Wait() // the Release of its slot
		other, err = b.TryReserve(cost)
		wantRefusedBy(t, other, err, client.Requests, "with the bucket's 2 spent")
		if got := f.level("s/in-flight"); got != 0 {
			t.Errorf("in-flight slots held after every reservation ended or was refused = %d; want 0", got)
		}

		for i, a := range f.acquires() {
			req := a.req
			keys := make([]string, len(req.GetItems()))
			for k, it := range req.GetItems() {
				keys[k] = it.GetKey()
			}
			switch {
			case i == 0:
				// The first, refused as invalid: it took nothing.
			case len(keys) == 1 && keys[0] == "s/in-flight":
				if req.GetTtlNs() == 0 {
					t.Errorf("acquire %d of the slot asked ttl 0; want a lease", i)
				}
			case len(keys) == 1 && keys[0] == "s/requests":
				if req.GetTtlNs() != 0 || req.GetSpanNs() != int64(transport.MaxLeaseTTL) || !req.GetSpanBuckets() {
					t.Errorf("acquire %d of the bucket asked ttl %v, span %v, span_buckets %v; want a central decision with the longest span",
						i, time.Duration(req.GetTtlNs()), time.Duration(req.GetSpanNs()), req.GetSpanBuckets())
				}
			default:
				t.Errorf("acquire %d of %q; want the slot and the bucket apart", i, keys)
			}
		}
	})
}

// TestBudgetInFlightSlotKeptWhileTheRestIsDecided: a slot taken apart, on
// a lease shorter than the central decision that follows it takes, is
// renewed meanwhile, as for an open reservation, not given back: the
// reservation holds its slot when Reserve returns, and nothing was late.
func TestBudgetInFlightSlotKeptWhileTheRestIsDecided(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 1)
		f.noLeaseKey(t, "s/requests", 1000, time.Second)
		c := f.dial(t)
		b := c.Budget("s",
			client.Rule{Counts: client.Requests, Limit: client.Limit{Rate: 1000, Per: time.Second}},
			client.Rule{Counts: client.InFlight, Limit: client.Limit{Rate: 1, MaxLease: 100 * time.Millisecond}},
		)
		cost := client.Cost{Requests: 1}

		release := f.holdAcquires()
		done := make(chan error, 1)
		var r client.Reservation
		go func() {
			var err error
			r, err = b.Reserve(t.Context(), cost)
			done <- err
		}()
		next := func() { f.set(func(f *fakeCluster) { close(f.mu.hold); f.mu.hold = make(chan struct{}) }) }
		synctest.Wait() // the Acquire of both, refused
		next()
		synctest.Wait() // the slot's Acquire
		next()
		synctest.Wait() // the central Acquire, the slot granted
		time.Sleep(time.Second)
		release()
		if err := <-done; err != nil {
			t.Fatalf("Reserve = %v; want a reservation", err)
		}
		if got := f.level("s/in-flight"); got != 1 {
			t.Errorf("slots held by the open reservation = %d; want 1", got)
		}
		if got := c.Stats().Denied.LateAnswer; got != 0 {
			t.Errorf("Stats().Denied.LateAnswer = %d; want 0", got)
		}
		if err := r.Settle(t.Context(), cost); err != nil {
			t.Fatal(err)
		}
		if got := f.level("s/in-flight"); got != 0 {
			t.Errorf("slots held after Settle = %d; want 0", got)
		}
	})
}
