package cluster

import (
	"errors"
	"math"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/testing/protocmp"

	"github.com/leasehold/leasehold/fsm"
	"github.com/leasehold/leasehold/transport"
	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

// TestLimitsAgree: the request limits transport checks are the ones fsm
// enforces, so a request transport accepts is not rejected in Apply for them.
func TestLimitsAgree(t *testing.T) {
	if transport.MaxKeyLen != fsm.MaxKeyLen {
		t.Errorf("transport.MaxKeyLen %d != fsm.MaxKeyLen %d", transport.MaxKeyLen, fsm.MaxKeyLen)
	}
	if transport.MaxItems != fsm.MaxItems {
		t.Errorf("transport.MaxItems %d != fsm.MaxItems %d", transport.MaxItems, fsm.MaxItems)
	}
	if transport.MaxLeaseTTL != fsm.MaxLeaseTTL {
		t.Errorf("transport.MaxLeaseTTL %v != fsm.MaxLeaseTTL %v", transport.MaxLeaseTTL, fsm.MaxLeaseTTL)
	}
	if transport.MaxBlock != fsm.MaxBlock {
		t.Errorf("transport.MaxBlock %v != fsm.MaxBlock %v", transport.MaxBlock, fsm.MaxBlock)
	}
	for _, a := range []struct {
		pb  pb.Algorithm
		fsm fsm.Algorithm
	}{
		{pb.Algorithm_TOKEN_BUCKET, fsm.TokenBucket},
		{pb.Algorithm_SLIDING_WINDOW, fsm.SlidingWindow},
		{pb.Algorithm_CONCURRENCY, fsm.Concurrency},
	} {
		if int(a.pb) != int(a.fsm) {
			t.Errorf("algorithm %v is %d on the wire and %d in fsm", a.fsm, a.pb, a.fsm)
		}
	}
}

func TestLimitConversion(t *testing.T) {
	in := &pb.Limit{Algorithm: pb.Algorithm_SLIDING_WINDOW, Limit: 100, PeriodNs: int64(time.Minute),
		Burst: 5, Slots: 12, Strict: true, MaxLeaseNs: int64(3 * time.Second), MaxDebt: 7}
	l := LimitFromPB(in)
	// A window from the API counts in fsm.WindowBuckets: a minute in 32.
	want := fsm.Limit{Algorithm: fsm.SlidingWindow, Limit: 100, Period: time.Minute, Burst: 5, Slots: 12,
		Strict: true, MaxLease: 3 * time.Second, MaxDebt: 7, Buckets: 32}
	if l != want {
		t.Errorf("LimitFromPB = %+v; want %+v", l, want)
	}
	if diff := cmp.Diff(in, limitToPB(l), protocmp.Transform()); diff != "" {
		t.Errorf("round trip (-in +out):\n%s", diff)
	}
}

func TestAcquireConversion(t *testing.T) {
	req := &pb.AcquireRequest{ClientId: []byte("c"), Seq: 9, AckedBelow: 4, TtlNs: int64(time.Second), Paced: true, PacedAfterNs: 7, SpanNs: 3,
		Items: []*pb.AcquireItem{
			{Key: "a", Count: 1, Want: 5},
			{Key: "b", Count: 2, Limit: &pb.Limit{Algorithm: pb.Algorithm_CONCURRENCY, Limit: 3}},
		}}
	got := acquireCommand(req)
	want := &fsm.Acquire{ClientID: "c", Seq: 9, AckedBelow: 4, TTL: time.Second, Paced: true, PacedAfter: 7, Span: 3, Items: []fsm.Item{
		{Key: "a", Count: 1, Want: 5},
		{Key: "b", Count: 2, Limit: &fsm.Limit{Algorithm: fsm.Concurrency, Limit: 3}},
	}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("acquireCommand (-want +got):\n%s", diff)
	}

	tests := []struct {
		name string
		r    fsm.Result
		want *pb.AcquireResponse
	}{
		{"granted", fsm.Result{Status: fsm.StatusOK, Time: 7, LeaseID: 3, TTL: time.Second,
			Items: []fsm.ItemResult{{Granted: 2, Remaining: 8}}, Lessees: 3},
			&pb.AcquireResponse{Allowed: true, LeaseId: 3, TtlNs: int64(time.Second), LogTimeNs: 7,
				Items: []*pb.ItemGrant{{Granted: 2, Remaining: 8}}, Lessees: 3}},
		{"granted short, paced", fsm.Result{Status: fsm.StatusOK, Time: 7, LeaseID: 4, TTL: time.Second,
			RetryAfter: 800 * time.Millisecond, Items: []fsm.ItemResult{{Granted: 2, Remaining: 0}}},
			&pb.AcquireResponse{Allowed: true, LeaseId: 4, TtlNs: int64(time.Second), LogTimeNs: 7,
				RetryAfterNs: int64(800 * time.Millisecond), Items: []*pb.ItemGrant{{Granted: 2}}}},
		{"pieced", fsm.Result{Status: fsm.StatusOK, Time: 7, LeaseID: 5, TTL: time.Second, Pieces: 4, Piece: 250 * time.Millisecond,
			Items: []fsm.ItemResult{{Granted: 9, Remaining: 1}}},
			&pb.AcquireResponse{Allowed: true, LeaseId: 5, TtlNs: int64(time.Second), LogTimeNs: 7, Pieces: 4,
				PieceNs: int64(250 * time.Millisecond), Items: []*pb.ItemGrant{{Granted: 9, Remaining: 1}}}},
		{"denied", fsm.Result{Status: fsm.StatusDenied, Time: 7, RetryAfter: time.Millisecond,
			Items: []fsm.ItemResult{{Remaining: 0}}},
			&pb.AcquireResponse{RetryAfterNs: int64(time.Millisecond), LogTimeNs: 7, Items: []*pb.ItemGrant{{}}}},
		{"never", fsm.Result{Status: fsm.StatusDenied, Time: 7, RetryAfter: time.Duration(math.MaxInt64)},
			&pb.AcquireResponse{RetryAfterNs: -1, LogTimeNs: 7, Items: []*pb.ItemGrant{}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, acquireResponse(tt.r), protocmp.Transform()); diff != "" {
				t.Errorf("acquireResponse (-want +got):\n%s", diff)
			}
		})
	}
}

func TestChargeAndRestrictConversion(t *testing.T) {
	lim := &pb.Limit{Algorithm: pb.Algorithm_TOKEN_BUCKET, Limit: 3, PeriodNs: 1, MaxDebt: 2}
	ch := chargeCommand(&pb.ChargeRequest{ClientId: []byte("c"), Seq: 9, AckedBelow: 4,
		Items: []*pb.ChargeItem{{Key: "a", Tokens: 5, Limit: lim}, {Key: "b", Tokens: 1}}})
	wantCh := &fsm.Charge{ClientID: "c", Seq: 9, AckedBelow: 4, Items: []fsm.ChargeItem{
		{Key: "a", Tokens: 5, Limit: &fsm.Limit{Algorithm: fsm.TokenBucket, Limit: 3, Period: 1, MaxDebt: 2}},
		{Key: "b", Tokens: 1}}}
	if diff := cmp.Diff(wantCh, ch); diff != "" {
		t.Errorf("chargeCommand (-want +got):\n%s", diff)
	}
	zero := int64(0)
	r := restrictCommand(&pb.RestrictRequest{ClientId: []byte("c"), Seq: 10, Items: []*pb.RestrictItem{
		{Key: "a", BlockedForNs: int64(time.Second)}, {Key: "b", Remaining: &zero, Limit: lim}}})
	wantR := &fsm.Restrict{ClientID: "c", Seq: 10, Items: []fsm.RestrictItem{
		{Key: "a", Remaining: fsm.NoRemaining, BlockFor: time.Second},
		{Key: "b", Remaining: 0, Limit: &fsm.Limit{Algorithm: fsm.TokenBucket, Limit: 3, Period: 1, MaxDebt: 2}}}}
	if diff := cmp.Diff(wantR, r); diff != "" {
		t.Errorf("restrictCommand (-want +got):\n%s", diff)
	}
	if got := retryAfterNs(time.Duration(math.MaxInt64)); got != -1 {
		t.Errorf("retryAfterNs(Never) = %d; want -1", got)
	}
}

func TestResultError(t *testing.T) {
	tests := []struct {
		status fsm.Status
		want   error // nil: an answer, not an error
	}{
		{fsm.StatusOK, nil},
		{fsm.StatusDenied, nil},
		{fsm.StatusLeaseGone, nil},
		{fsm.StatusNoLimit, transport.ErrNoLimit},
		{fsm.StatusStale, transport.ErrStale},
		{fsm.StatusInvalidKey, transport.ErrInvalid},
		{fsm.StatusInvalidCount, transport.ErrInvalid},
		{fsm.StatusInvalidLimit, transport.ErrInvalid},
		{fsm.StatusInvalidTTL, transport.ErrInvalid},
		{fsm.StatusInvalidRequest, transport.ErrInvalid},
		{fsm.StatusSeqReused, transport.ErrInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.status.String(), func(t *testing.T) {
			err := resultError(fsm.Result{Status: tt.status, Message: "why"})
			if tt.want == nil {
				if err != nil {
					t.Fatalf("resultError = %v; want nil", err)
				}
				return
			}
			if !errors.Is(err, tt.want) {
				t.Fatalf("resultError = %v; want %v", err, tt.want)
			}
			wantField := ""
			if tt.status == fsm.StatusSeqReused {
				wantField = "seq"
			}
			var inv *transport.InvalidError
			if errors.As(err, &inv) && (inv.Reason != "why" || inv.Field != wantField) {
				t.Errorf("InvalidError = %+v; want reason %q and field %q", inv, "why", wantField)
			}
		})
	}
	if err := resultError(fsm.Result{Status: 99}); err == nil {
		t.Error("unknown status: no error")
	}
	// A NoLimit result names its key, and the status the client gets does.
	err := transport.FromStatus(transport.ToStatus(resultError(fsm.Result{Status: fsm.StatusNoLimit, Message: "why", NoLimitKey: "k"})))
	var nl *transport.NoLimitError
	if !errors.As(err, &nl) || nl.Key != "k" || !errors.Is(err, transport.ErrNoLimit) {
		t.Errorf("NoLimit naming k, through a status: %v (%#v); want a *NoLimitError for k", err, nl)
	}
}
