package transport_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/leasehold/leasehold/transport"
	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

// invalidCase is one row of a validation table: a change to a good request
// and the field it should blame, or "" when the request stays valid.
type invalidCase[Req any] struct {
	name   string
	modify func(Req)
	field  string
	reason string // a substring of the reason; optional
}

// runValidate applies each row's change to a fresh copy of good and checks
// what validate says.
func runValidate[Req proto.Message](t *testing.T, good func() Req, validate func(Req) error, tests []invalidCase[Req]) {
	t.Helper()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			req := good()
			tt.modify(req)
			err := validate(req)
			if tt.field == "" {
				if err != nil {
					t.Fatalf("validate(%v) = %v, want nil", req, err)
				}
				return
			}
			var ie *transport.InvalidError
			if !errors.As(err, &ie) {
				t.Fatalf("validate(%v) = %v, want an *InvalidError", req, err)
			}
			if !errors.Is(err, transport.ErrInvalid) {
				t.Errorf("errors.Is(%v, ErrInvalid) = false", err)
			}
			if ie.Field != tt.field {
				t.Errorf("field = %q, want %q (error: %v)", ie.Field, tt.field, err)
			}
			if !strings.Contains(ie.Reason, tt.reason) {
				t.Errorf("reason = %q, want it to contain %q", ie.Reason, tt.reason)
			}
		})
	}
}

func goodLimit() *pb.Limit {
	return &pb.Limit{Algorithm: pb.Algorithm_TOKEN_BUCKET, Limit: 100, PeriodNs: int64(time.Minute)}
}

func goodAcquire() *pb.AcquireRequest {
	return &pb.AcquireRequest{
		ClientId: []byte("client-1"),
		Seq:      1,
		TtlNs:    int64(2 * time.Second),
		Items: []*pb.AcquireItem{
			{Key: "requests", Count: 1, Want: 10, Limit: goodLimit()},
			{Key: "tokens", Count: 500},
		},
	}
}

func TestValidateAcquire(t *testing.T) {
	t.Parallel()
	nItems := func(n int) []*pb.AcquireItem {
		items := make([]*pb.AcquireItem, n)
		for i := range items {
			items[i] = &pb.AcquireItem{Key: string(rune('a' + i)), Count: 1}
		}
		return items
	}
	type R = *pb.AcquireRequest
	runValidate(t, goodAcquire, transport.ValidateAcquire, []invalidCase[R]{
		{name: "good", modify: func(R) {}},
		{name: "client_id 1 byte", modify: func(r R) { r.ClientId = []byte{0} }},
		{name: "client_id 64 bytes", modify: func(r R) { r.ClientId = make([]byte, 64) }},
		{name: "client_id empty", modify: func(r R) { r.ClientId = nil }, field: "client_id", reason: "empty"},
		{name: "client_id 65 bytes", modify: func(r R) { r.ClientId = make([]byte, 65) },
			field: "client_id", reason: "65 bytes; the most is 64"},
		{name: "seq 0", modify: func(r R) { r.Seq = 0 }, field: "seq", reason: "start at 1"},
		{name: "seq max", modify: func(r R) { r.Seq = ^uint64(0) }},
		{name: "acked_below equal to seq", modify: func(r R) { r.Seq, r.AckedBelow = 5, 5 }},
		{name: "acked_below above seq", modify: func(r R) { r.Seq, r.AckedBelow = 5, 6 },
			field: "acked_below", reason: "above seq 5"},
		{name: "ttl 0 (central decision)", modify: func(r R) { r.TtlNs = 0 }},
		{name: "ttl 60s", modify: func(r R) { r.TtlNs = int64(time.Minute) }},
		{name: "ttl negative", modify: func(r R) { r.TtlNs = -1 }, field: "ttl_ns", reason: "[0, 1m0s]"},
		{name: "ttl above 60s", modify: func(r R) { r.TtlNs = int64(time.Minute) + 1 }, field: "ttl_ns", reason: "[0, 1m0s]"},
		{name: "span with ttl 0", modify: func(r R) { r.TtlNs, r.SpanNs = 0, int64(25*time.Millisecond) }},
		{name: "span with a ttl", modify: func(r R) { r.TtlNs, r.SpanNs = int64(time.Second), 1 }, field: "span_ns", reason: "0 with a lease TTL"},
		{name: "span negative", modify: func(r R) { r.TtlNs, r.SpanNs = 0, -1 }, field: "span_ns", reason: "[0, 1m0s]"},
		{name: "span above 60s", modify: func(r R) { r.TtlNs, r.SpanNs = 0, int64(time.Minute)+1 }, field: "span_ns", reason: "[0, 1m0s]"},
		{name: "paced after negative", modify: func(r R) { r.Paced, r.PacedAfterNs = true, -1 }, field: "paced_after_ns", reason: "negative"},
		{name: "no items", modify: func(r R) { r.Items = nil }, field: "items", reason: "send 1 to 8"},
		{name: "8 items", modify: func(r R) { r.Items = nItems(8) }},
		{name: "9 items", modify: func(r R) { r.Items = nItems(9) }, field: "items", reason: "9 items; the most is 8"},
		{name: "key empty", modify: func(r R) { r.Items[1].Key = "" }, field: "items[1].key", reason: "empty"},
		{name: "key 512 bytes", modify: func(r R) { r.Items[1].Key = strings.Repeat("k", 512) }},
		{name: "key 600 bytes", modify: func(r R) { r.Items[1].Key = strings.Repeat("k", 600) },
			field: "items[1].key", reason: "key is 600 bytes; the most is 512"},
		{name: "key not UTF-8", modify: func(r R) { r.Items[1].Key = "tenant-\xff" },
			field: "items[1].key", reason: "not valid UTF-8"},
		{name: "key UTF-8 beyond ASCII", modify: func(r R) { r.Items[1].Key = "tenant-é:模型" }},
		{name: "duplicate key", modify: func(r R) { r.Items[1].Key = "requests" },
			field: "items[1].key", reason: `"requests" is also items[0].key`},
		{name: "count 0", modify: func(r R) { r.Items[0].Count = 0 }, field: "items[0].count", reason: "at least 1"},
		{name: "count negative", modify: func(r R) { r.Items[0].Count = -5 }, field: "items[0].count", reason: "at least 1"},
		{name: "want 0 means count", modify: func(r R) { r.Items[0].Want = 0 }},
		{name: "want equal to count", modify: func(r R) { r.Items[0].Count, r.Items[0].Want = 3, 3 }},
		{name: "want below count", modify: func(r R) { r.Items[0].Count, r.Items[0].Want = 5, 3 },
			field: "items[0].want", reason: "want 3 is below count 5"},
		{name: "want negative", modify: func(r R) { r.Items[0].Want = -1 }, field: "items[0].want"},
		{name: "no inline limit", modify: func(r R) { r.Items[0].Limit = nil }},
		{name: "bad inline limit", modify: func(r R) { r.Items[0].Limit.Limit = 0 },
			field: "items[0].limit.limit", reason: "positive"},
		{name: "first problem wins", modify: func(r R) { r.Seq = 0; r.Items = nil }, field: "seq"},
	})
}

func TestValidateLimit(t *testing.T) {
	t.Parallel()
	type L = *pb.Limit
	validate := func(l L) error { return transport.ValidateLimit("limit", l) }
	runValidate(t, goodLimit, validate, []invalidCase[L]{
		{name: "token bucket", modify: func(L) {}},
		{name: "sliding window", modify: func(l L) { l.Algorithm = pb.Algorithm_SLIDING_WINDOW; l.Slots = 64 }},
		{name: "concurrency ignores period", modify: func(l L) { l.Algorithm = pb.Algorithm_CONCURRENCY; l.PeriodNs = -1 }},
		{name: "unspecified algorithm", modify: func(l L) { l.Algorithm = pb.Algorithm_ALGORITHM_UNSPECIFIED },
			field: "limit.algorithm", reason: "unknown algorithm 0; want TOKEN_BUCKET, SLIDING_WINDOW or CONCURRENCY"},
		{name: "unknown algorithm", modify: func(l L) { l.Algorithm = 9 },
			field: "limit.algorithm", reason: "unknown algorithm 9; want TOKEN_BUCKET, SLIDING_WINDOW or CONCURRENCY"},
		{name: "limit 0", modify: func(l L) { l.Limit = 0 }, field: "limit.limit", reason: "limit is 0; it must be positive"},
		{name: "limit negative", modify: func(l L) { l.Limit = -10 }, field: "limit.limit", reason: "positive"},
		{name: "concurrency limit 0", modify: func(l L) { l.Algorithm = pb.Algorithm_CONCURRENCY; l.Limit = 0 },
			field: "limit.limit"},
		{name: "bucket period 0", modify: func(l L) { l.PeriodNs = 0 },
			field: "limit.period_ns", reason: "a TOKEN_BUCKET limit needs a positive period"},
		{name: "window period negative", modify: func(l L) { l.Algorithm = pb.Algorithm_SLIDING_WINDOW; l.PeriodNs = -1 },
			field: "limit.period_ns", reason: "SLIDING_WINDOW"},
		{name: "burst 0 means limit", modify: func(l L) { l.Burst = 0 }},
		{name: "burst above limit", modify: func(l L) { l.Burst = 1000 }},
		{name: "burst negative", modify: func(l L) { l.Burst = -1 }, field: "limit.burst", reason: "at least 0"},
		{name: "slots 0 means 10", modify: func(l L) { l.Algorithm = pb.Algorithm_SLIDING_WINDOW; l.Slots = 0 }},
		{name: "slots negative", modify: func(l L) { l.Slots = -1 }, field: "limit.slots", reason: "[0, 64]"},
		{name: "slots 65", modify: func(l L) { l.Slots = 65 }, field: "limit.slots", reason: "[0, 64]"},
		{name: "window of 64ns in 64 slots", modify: func(l L) {
			l.Algorithm, l.PeriodNs, l.Slots = pb.Algorithm_SLIDING_WINDOW, 64, 64
		}},
		{name: "window of 10ns in the default 10 slots", modify: func(l L) {
			l.Algorithm, l.PeriodNs, l.Slots = pb.Algorithm_SLIDING_WINDOW, 10, 0
		}},
		{name: "window of 9ns in the default 10 slots", modify: func(l L) {
			l.Algorithm, l.PeriodNs, l.Slots = pb.Algorithm_SLIDING_WINDOW, 9, 0
		}, field: "limit.slots", reason: "10 slots in a window of 9ns"},
		{name: "bucket slots above period are ignored", modify: func(l L) { l.PeriodNs, l.Slots = 10, 64 }},
		{name: "max lease 60s", modify: func(l L) { l.MaxLeaseNs = int64(time.Minute) }},
		{name: "max lease negative", modify: func(l L) { l.MaxLeaseNs = -1 }, field: "limit.max_lease_ns", reason: "[0, 1m0s]"},
		{name: "max lease above 60s", modify: func(l L) { l.MaxLeaseNs = int64(time.Minute) + 1 },
			field: "limit.max_lease_ns", reason: "[0, 1m0s]"},
		{name: "strict", modify: func(l L) { l.Strict = true }},
		{name: "max debt", modify: func(l L) { l.MaxDebt = 1 << 40 }},
		{name: "max debt negative", modify: func(l L) { l.MaxDebt = -1 }, field: "limit.max_debt", reason: "at least 0"},
		{name: "max debt on a window is ignored", modify: func(l L) { l.Algorithm = pb.Algorithm_SLIDING_WINDOW; l.MaxDebt = 5 }},
	})

	if err := transport.ValidateLimit("items[3].limit", nil); !errors.Is(err, transport.ErrInvalid) ||
		err.Error() != "invalid items[3].limit: no limit" {
		t.Errorf("ValidateLimit(nil) = %v, want invalid items[3].limit: no limit", err)
	}
}

func TestValidateRelease(t *testing.T) {
	t.Parallel()
	type R = *pb.ReleaseRequest
	good := func() R {
		return &pb.ReleaseRequest{ClientId: []byte("client-1"), Seq: 2, AckedBelow: 1, LeaseId: 7, Unused: []int64{3, 0}}
	}
	runValidate(t, good, transport.ValidateRelease, []invalidCase[R]{
		{name: "good", modify: func(R) {}},
		{name: "empty unused means all unused", modify: func(r R) { r.Unused = nil }},
		{name: "client_id empty", modify: func(r R) { r.ClientId = nil }, field: "client_id"},
		{name: "client_id 65 bytes", modify: func(r R) { r.ClientId = make([]byte, 65) }, field: "client_id"},
		{name: "seq 0", modify: func(r R) { r.Seq, r.AckedBelow = 0, 0 }, field: "seq"},
		{name: "acked_below above seq", modify: func(r R) { r.AckedBelow = 3 }, field: "acked_below"},
		{name: "lease_id 0", modify: func(r R) { r.LeaseId = 0 }, field: "lease_id", reason: "lease_id of an AcquireResponse"},
		{name: "unused negative", modify: func(r R) { r.Unused[1] = -2 }, field: "unused[1]", reason: "unused is -2"},
		{name: "8 unused", modify: func(r R) { r.Unused = make([]int64, 8) }},
		{name: "9 unused", modify: func(r R) { r.Unused = make([]int64, 9) },
			field: "unused", reason: "9 unused counts; a lease has at most 8 items"},
	})
}

// TestReleaseWithMillionsOfUnusedIsInvalid: a Release carrying 4,000,000
// unused counts for an unknown lease was proposed and appended a ~4 MB Raft
// entry (issue 13). A lease has at most MaxItems items, so at most MaxItems
// counts are valid, and the check looks at the length before any element.
func TestReleaseWithMillionsOfUnusedIsInvalid(t *testing.T) {
	t.Parallel()
	req := &pb.ReleaseRequest{ClientId: []byte("c"), Seq: 1, LeaseId: 12345, Unused: make([]int64, 4_000_000)}
	var ie *transport.InvalidError
	if err := transport.ValidateRelease(req); !errors.As(err, &ie) || ie.Field != "unused" {
		t.Fatalf("ValidateRelease(4M unused) = %v, want an *InvalidError for unused", err)
	}
}

// TestSlidingWindowWithMoreSlotsThanNanosecondsIsRejected: a 64-slot window
// with a 10 ns period was accepted although validate.go said it was rejected
// (issue 13). It is rejected here, statelessly, as the doc says.
func TestSlidingWindowWithMoreSlotsThanNanosecondsIsRejected(t *testing.T) {
	t.Parallel()
	l := &pb.Limit{Algorithm: pb.Algorithm_SLIDING_WINDOW, Limit: 5, PeriodNs: 10, Slots: 64}
	var ie *transport.InvalidError
	if err := transport.ValidateLimit("limit", l); !errors.As(err, &ie) || ie.Field != "limit.slots" {
		t.Fatalf("ValidateLimit(64 slots in 10ns) = %v, want an *InvalidError for limit.slots", err)
	}
	set := &pb.SetLimitRequest{Key: "k", Limit: l}
	if err := transport.ValidateSetLimit(set); !errors.As(err, &ie) || ie.Field != "limit.slots" {
		t.Errorf("ValidateSetLimit = %v, want an *InvalidError for limit.slots", err)
	}
}

// TestMaxRequestBytes: the largest valid requests fit in MaxRequestBytes
// with room to spare (at least 3x), and the request that filled the Raft log
// in issue 13 does not.
func TestMaxRequestBytes(t *testing.T) {
	t.Parallel()
	limit := &pb.Limit{Algorithm: pb.Algorithm_SLIDING_WINDOW, Limit: 1<<63 - 1, PeriodNs: 1<<63 - 1, Burst: 1<<63 - 1,
		Slots: transport.MaxSlots, Strict: true, MaxLeaseNs: int64(transport.MaxLeaseTTL), MaxDebt: 1<<63 - 1}
	acquire := &pb.AcquireRequest{ClientId: make([]byte, transport.MaxClientIDLen), Seq: 1<<64 - 1, AckedBelow: 1<<64 - 1,
		TtlNs: int64(transport.MaxLeaseTTL)}
	for i := range transport.MaxItems {
		key := strings.Repeat(string(rune('a'+i)), transport.MaxKeyLen)
		acquire.Items = append(acquire.Items, &pb.AcquireItem{Key: key, Count: 1<<63 - 1, Want: 1<<63 - 1, Limit: limit})
	}
	unused := make([]int64, transport.MaxItems)
	for i := range unused {
		unused[i] = 1<<63 - 1
	}
	charge := &pb.ChargeRequest{ClientId: acquire.ClientId, Seq: 1<<64 - 1, AckedBelow: 1<<64 - 1}
	restrict := &pb.RestrictRequest{ClientId: acquire.ClientId, Seq: 1<<64 - 1, AckedBelow: 1<<64 - 1}
	for _, it := range acquire.Items {
		charge.Items = append(charge.Items, &pb.ChargeItem{Key: it.Key, Tokens: 1<<63 - 1, Limit: limit})
		most := int64(1<<63 - 1)
		restrict.Items = append(restrict.Items, &pb.RestrictItem{Key: it.Key, Remaining: &most,
			BlockedForNs: int64(transport.MaxBlock), Limit: limit})
	}
	largest := []proto.Message{
		acquire,
		charge,
		restrict,
		&pb.ExtendRequest{ClientId: acquire.ClientId, Seq: 1<<64 - 1, AckedBelow: 1<<64 - 1, LeaseId: 1<<64 - 1,
			TtlNs: int64(transport.MaxLeaseTTL)},
		&pb.ReleaseRequest{ClientId: acquire.ClientId, Seq: 1<<64 - 1, AckedBelow: 1<<64 - 1, LeaseId: 1<<64 - 1, Unused: unused},
		&pb.SetLimitRequest{Key: acquire.Items[0].Key, Limit: limit},
		&pb.GetLimitRequest{Key: acquire.Items[0].Key},
		&pb.DeleteLimitRequest{Key: acquire.Items[0].Key},
	}
	for _, m := range largest {
		if err := validateAny(m); err != nil {
			t.Fatalf("the largest %s is not valid: %v", m.ProtoReflect().Descriptor().Name(), err)
		}
		if n := proto.Size(m); 3*n > transport.MaxRequestBytes {
			t.Errorf("the largest valid %s is %d bytes; MaxRequestBytes %d leaves less than 3x room",
				m.ProtoReflect().Descriptor().Name(), n, transport.MaxRequestBytes)
		} else {
			t.Logf("largest valid %s: %d bytes", m.ProtoReflect().Descriptor().Name(), n)
		}
	}
	flood := &pb.ReleaseRequest{ClientId: []byte("c"), Seq: 1, LeaseId: 12345, Unused: make([]int64, 4_000_000)}
	if n := proto.Size(flood); n <= transport.MaxRequestBytes {
		t.Errorf("a Release of 4M unused counts is %d bytes, within MaxRequestBytes", n)
	}
}

// validateAny runs the Validate function of m's type.
func validateAny(m proto.Message) error {
	switch r := m.(type) {
	case *pb.AcquireRequest:
		return transport.ValidateAcquire(r)
	case *pb.ReleaseRequest:
		return transport.ValidateRelease(r)
	case *pb.SetLimitRequest:
		return transport.ValidateSetLimit(r)
	case *pb.GetLimitRequest:
		return transport.ValidateGetLimit(r)
	case *pb.DeleteLimitRequest:
		return transport.ValidateDeleteLimit(r)
	case *pb.ChargeRequest:
		return transport.ValidateCharge(r)
	case *pb.ExtendRequest:
		return transport.ValidateExtend(r)
	case *pb.RestrictRequest:
		return transport.ValidateRestrict(r)
	}
	panic(fmt.Sprintf("validateAny: no Validate function for %T", m))
}

func goodCharge() *pb.ChargeRequest {
	return &pb.ChargeRequest{ClientId: []byte("client-1"), Seq: 3, AckedBelow: 2, Items: []*pb.ChargeItem{
		{Key: "openai:gpt-4.1/input-tokens", Tokens: 1200, Limit: &pb.Limit{Algorithm: pb.Algorithm_TOKEN_BUCKET,
			Limit: 200_000, PeriodNs: int64(time.Minute), MaxDebt: 200_000}},
		{Key: "openai:gpt-4.1/output-tokens", Tokens: 1},
	}}
}

func TestValidateCharge(t *testing.T) {
	t.Parallel()
	type R = *pb.ChargeRequest
	nItems := func(n int) []*pb.ChargeItem {
		items := make([]*pb.ChargeItem, n)
		for i := range items {
			items[i] = &pb.ChargeItem{Key: string(rune('a' + i)), Tokens: 1}
		}
		return items
	}
	runValidate(t, goodCharge, transport.ValidateCharge, []invalidCase[R]{
		{name: "good", modify: func(R) {}},
		{name: "client_id empty", modify: func(r R) { r.ClientId = nil }, field: "client_id"},
		{name: "seq 0", modify: func(r R) { r.Seq, r.AckedBelow = 0, 0 }, field: "seq"},
		{name: "acked_below above seq", modify: func(r R) { r.AckedBelow = 4 }, field: "acked_below"},
		{name: "no items", modify: func(r R) { r.Items = nil }, field: "items", reason: "send 1 to 8"},
		{name: "8 items", modify: func(r R) { r.Items = nItems(8) }},
		{name: "9 items", modify: func(r R) { r.Items = nItems(9) }, field: "items", reason: "9 items; the most is 8"},
		{name: "key empty", modify: func(r R) { r.Items[1].Key = "" }, field: "items[1].key", reason: "empty"},
		{name: "key not UTF-8", modify: func(r R) { r.Items[1].Key = "k\xff" }, field: "items[1].key", reason: "UTF-8"},
		{name: "duplicate key", modify: func(r R) { r.Items[1].Key = r.Items[0].Key }, field: "items[1].key",
			reason: "also items[0].key"},
		{name: "tokens 0", modify: func(r R) { r.Items[0].Tokens = 0 }, field: "items[0].tokens", reason: "at least 1"},
		{name: "tokens negative", modify: func(r R) { r.Items[1].Tokens = -1 }, field: "items[1].tokens"},
		{name: "tokens huge", modify: func(r R) { r.Items[1].Tokens = 1<<63 - 1 }},
		{name: "bad limit", modify: func(r R) { r.Items[0].Limit.MaxDebt = -1 }, field: "items[0].limit.max_debt"},
	})
}

func goodExtend() *pb.ExtendRequest {
	return &pb.ExtendRequest{ClientId: []byte("client-1"), Seq: 4, AckedBelow: 4, LeaseId: 17, TtlNs: int64(30 * time.Second)}
}

func TestValidateExtend(t *testing.T) {
	t.Parallel()
	type R = *pb.ExtendRequest
	runValidate(t, goodExtend, transport.ValidateExtend, []invalidCase[R]{
		{name: "good", modify: func(R) {}},
		{name: "client_id 65 bytes", modify: func(r R) { r.ClientId = make([]byte, 65) }, field: "client_id"},
		{name: "seq 0", modify: func(r R) { r.Seq, r.AckedBelow = 0, 0 }, field: "seq"},
		{name: "lease_id 0", modify: func(r R) { r.LeaseId = 0 }, field: "lease_id"},
		{name: "ttl 1ns", modify: func(r R) { r.TtlNs = 1 }},
		{name: "ttl 60s", modify: func(r R) { r.TtlNs = int64(time.Minute) }},
		{name: "ttl 0", modify: func(r R) { r.TtlNs = 0 }, field: "ttl_ns", reason: "[1ns, 1m0s]"},
		{name: "ttl negative", modify: func(r R) { r.TtlNs = -1 }, field: "ttl_ns"},
		{name: "ttl above 60s", modify: func(r R) { r.TtlNs = int64(time.Minute) + 1 }, field: "ttl_ns"},
	})
}

func goodRestrict() *pb.RestrictRequest {
	zero := int64(0)
	return &pb.RestrictRequest{ClientId: []byte("client-1"), Seq: 5, Items: []*pb.RestrictItem{
		{Key: "openai:gpt-4.1/requests", BlockedForNs: int64(20 * time.Second), Limit: goodLimit()},
		{Key: "openai:gpt-4.1/input-tokens", Remaining: &zero},
	}}
}

func TestValidateRestrict(t *testing.T) {
	t.Parallel()
	type R = *pb.RestrictRequest
	runValidate(t, goodRestrict, transport.ValidateRestrict, []invalidCase[R]{
		{name: "good", modify: func(R) {}},
		{name: "client_id empty", modify: func(r R) { r.ClientId = nil }, field: "client_id"},
		{name: "no items", modify: func(r R) { r.Items = nil }, field: "items"},
		{name: "key too long", modify: func(r R) { r.Items[0].Key = strings.Repeat("k", 513) }, field: "items[0].key"},
		{name: "duplicate key", modify: func(r R) { r.Items[1].Key = r.Items[0].Key }, field: "items[1].key"},
		{name: "both", modify: func(r R) { r.Items[1].BlockedForNs = 1 }},
		{name: "remaining negative", modify: func(r R) { n := int64(-1); r.Items[1].Remaining = &n },
			field: "items[1].remaining", reason: "at least 0"},
		{name: "block 24h", modify: func(r R) { r.Items[0].BlockedForNs = int64(24 * time.Hour) }},
		{name: "block above 24h", modify: func(r R) { r.Items[0].BlockedForNs = int64(24*time.Hour) + 1 },
			field: "items[0].blocked_for_ns", reason: "[0, 24h0m0s]"},
		{name: "block negative", modify: func(r R) { r.Items[0].BlockedForNs = -1 }, field: "items[0].blocked_for_ns"},
		{name: "nothing to do", modify: func(r R) { r.Items[0].BlockedForNs = 0 }, field: "items[0].blocked_for_ns",
			reason: "restricts nothing"},
		{name: "bad limit", modify: func(r R) { r.Items[0].Limit.Limit = 0 }, field: "items[0].limit.limit"},
	})
}

func TestValidateSetLimit(t *testing.T) {
	t.Parallel()
	type R = *pb.SetLimitRequest
	good := func() R { return &pb.SetLimitRequest{Key: "gpt-4o/requests", Limit: goodLimit()} }
	runValidate(t, good, transport.ValidateSetLimit, []invalidCase[R]{
		{name: "good", modify: func(R) {}},
		{name: "key empty", modify: func(r R) { r.Key = "" }, field: "key", reason: "empty"},
		{name: "key 513 bytes", modify: func(r R) { r.Key = strings.Repeat("k", 513) }, field: "key", reason: "513 bytes"},
		{name: "key not UTF-8", modify: func(r R) { r.Key = "\xc3\x28" }, field: "key", reason: "not valid UTF-8"},
		{name: "no limit", modify: func(r R) { r.Limit = nil }, field: "limit", reason: "SetLimit needs one"},
		{name: "bad limit", modify: func(r R) { r.Limit.PeriodNs = 0 }, field: "limit.period_ns"},
	})
}

func TestValidateGetAndDeleteLimit(t *testing.T) {
	t.Parallel()
	type G = *pb.GetLimitRequest
	runValidate(t, func() G { return &pb.GetLimitRequest{Key: "k"} }, transport.ValidateGetLimit, []invalidCase[G]{
		{name: "get good", modify: func(G) {}},
		{name: "get key empty", modify: func(r G) { r.Key = "" }, field: "key"},
		{name: "get key 513 bytes", modify: func(r G) { r.Key = strings.Repeat("k", 513) }, field: "key"},
		{name: "get key not UTF-8", modify: func(r G) { r.Key = "\xff" }, field: "key", reason: "not valid UTF-8"},
	})
	type D = *pb.DeleteLimitRequest
	runValidate(t, func() D { return &pb.DeleteLimitRequest{Key: "k"} }, transport.ValidateDeleteLimit, []invalidCase[D]{
		{name: "delete good", modify: func(D) {}},
		{name: "delete key empty", modify: func(r D) { r.Key = "" }, field: "key"},
		{name: "delete key 513 bytes", modify: func(r D) { r.Key = strings.Repeat("k", 513) }, field: "key"},
		{name: "delete key not UTF-8", modify: func(r D) { r.Key = "\xff" }, field: "key", reason: "not valid UTF-8"},
	})
}
