package cluster

import (
	"bytes"
	"context"
	"math"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/leasehold/leasehold/transport"
	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

// fuzzMethod is one method of the API as the fuzz target sees it.
type fuzzMethod struct {
	name     string
	request  func() proto.Message           // an empty request of the method's type
	validate func(proto.Message) error      // the server's Validate function
	hostile  func(s *hostile) proto.Message // a request built from fuzz bytes
}

var fuzzMethods = []fuzzMethod{
	{pb.Leasehold_Acquire_FullMethodName, func() proto.Message { return &pb.AcquireRequest{} },
		func(m proto.Message) error { return transport.ValidateAcquire(m.(*pb.AcquireRequest)) },
		func(s *hostile) proto.Message {
			r := &pb.AcquireRequest{ClientId: s.clientID(), Seq: s.seq(), TtlNs: s.int64()}
			r.AckedBelow = r.Seq - uint64(s.n(3))
			for range s.count() {
				it := &pb.AcquireItem{Key: s.key(), Count: s.int64(), Want: s.int64()}
				if s.n(2) == 0 {
					it.Limit = s.limit()
				}
				r.Items = append(r.Items, it)
			}
			return r
		}},
	{pb.Leasehold_Release_FullMethodName, func() proto.Message { return &pb.ReleaseRequest{} },
		func(m proto.Message) error { return transport.ValidateRelease(m.(*pb.ReleaseRequest)) },
		func(s *hostile) proto.Message {
			r := &pb.ReleaseRequest{ClientId: s.clientID(), Seq: s.seq(), LeaseId: uint64(s.n(4))}
			r.AckedBelow = r.Seq - uint64(s.n(3))
			for range s.count() {
				r.Unused = append(r.Unused, s.int64())
			}
			return r
		}},
	{pb.Leasehold_SetLimit_FullMethodName, func() proto.Message { return &pb.SetLimitRequest{} },
		func(m proto.Message) error { return transport.ValidateSetLimit(m.(*pb.SetLimitRequest)) },
		func(s *hostile) proto.Message {
			r := &pb.SetLimitRequest{Key: s.key()}
			if s.n(8) != 0 {
				r.Limit = s.limit()
			}
			return r
		}},
	{pb.Leasehold_GetLimit_FullMethodName, func() proto.Message { return &pb.GetLimitRequest{} },
		func(m proto.Message) error { return transport.ValidateGetLimit(m.(*pb.GetLimitRequest)) },
		func(s *hostile) proto.Message { return &pb.GetLimitRequest{Key: s.key()} }},
	{pb.Leasehold_DeleteLimit_FullMethodName, func() proto.Message { return &pb.DeleteLimitRequest{} },
		func(m proto.Message) error { return transport.ValidateDeleteLimit(m.(*pb.DeleteLimitRequest)) },
		func(s *hostile) proto.Message { return &pb.DeleteLimitRequest{Key: s.key()} }},
	{pb.Leasehold_Status_FullMethodName, func() proto.Message { return &pb.StatusRequest{} },
		func(proto.Message) error { return nil },
		func(*hostile) proto.Message { return &pb.StatusRequest{} }},
	{pb.Leasehold_Charge_FullMethodName, func() proto.Message { return &pb.ChargeRequest{} },
		func(m proto.Message) error { return transport.ValidateCharge(m.(*pb.ChargeRequest)) },
		func(s *hostile) proto.Message {
			r := &pb.ChargeRequest{ClientId: s.clientID(), Seq: s.seq()}
			r.AckedBelow = r.Seq - uint64(s.n(3))
			for range s.count() {
				it := &pb.ChargeItem{Key: s.key(), Tokens: s.int64()}
				if s.n(2) == 0 {
					it.Limit = s.limit()
				}
				r.Items = append(r.Items, it)
			}
			return r
		}},
	{pb.Leasehold_Extend_FullMethodName, func() proto.Message { return &pb.ExtendRequest{} },
		func(m proto.Message) error { return transport.ValidateExtend(m.(*pb.ExtendRequest)) },
		func(s *hostile) proto.Message {
			r := &pb.ExtendRequest{ClientId: s.clientID(), Seq: s.seq(), LeaseId: uint64(s.n(4)), TtlNs: s.int64()}
			r.AckedBelow = r.Seq - uint64(s.n(3))
			return r
		}},
	{pb.Leasehold_Restrict_FullMethodName, func() proto.Message { return &pb.RestrictRequest{} },
		func(m proto.Message) error { return transport.ValidateRestrict(m.(*pb.RestrictRequest)) },
		func(s *hostile) proto.Message {
			r := &pb.RestrictRequest{ClientId: s.clientID(), Seq: s.seq()}
			r.AckedBelow = r.Seq - uint64(s.n(3))
			for range s.count() {
				it := &pb.RestrictItem{Key: s.key(), BlockedForNs: s.int64()}
				if s.n(2) == 0 {
					v := s.int64()
					it.Remaining = &v
				}
				if s.n(2) == 0 {
					it.Limit = s.limit()
				}
				r.Items = append(r.Items, it)
			}
			return r
		}},
	{pb.Leasehold_ListLimits_FullMethodName, func() proto.Message { return &pb.ListLimitsRequest{} },
		func(m proto.Message) error { return transport.ValidateListLimits(m.(*pb.ListLimitsRequest)) },
		func(s *hostile) proto.Message {
			return &pb.ListLimitsRequest{Prefix: s.key(), StartAfter: s.key(), PageSize: int32(s.int64()), PinnedOnly: s.n(2) == 1}
		}},
}

// hostile reads fuzz bytes as choices among values that are valid but
// extreme, or just past a limit. Past the end every choice is 0.
type hostile struct{ b []byte }

func (s *hostile) byte() byte {
	if len(s.b) == 0 {
		return 0
	}
	v := s.b[0]
	s.b = s.b[1:]
	return v
}

func (s *hostile) n(k int) int { return int(s.byte()) % k }

var hostileInts = []int64{0, 1, 2, -1, 10, 64, 65, math.MaxInt64, math.MinInt64, math.MaxInt32 + 2,
	int64(time.Minute), int64(time.Minute) + 1, int64(time.Hour), 1 << 62}

func (s *hostile) int64() int64 { return hostileInts[s.n(len(hostileInts))] }

// A few clients and seqs, so that seqs are reused, with other bodies too.
func (s *hostile) clientID() []byte {
	return [][]byte{nil, []byte("a"), []byte("b"), make([]byte, 64), make([]byte, 65)}[s.n(5)]
}

func (s *hostile) seq() uint64 { return []uint64{0, 1, 2, 3, math.MaxUint64}[s.n(5)] }

// count is how many items or unused counts: around MaxItems mostly, and
// now and then enough to pass MaxRequestBytes.
func (s *hostile) count() int {
	if s.n(16) == 0 {
		return transport.MaxRequestBytes + 1 // at least a byte each
	}
	return s.n(transport.MaxItems + 3)
}

// badKey stands for a key that is not UTF-8; send replaces it.
const badKey = "\x00BAD-KEY\x00"

func (s *hostile) key() string {
	return []string{"", "k", "k", "w", strings.Repeat("x", transport.MaxKeyLen), strings.Repeat("y", transport.MaxKeyLen+1),
		badKey, "é:模型"}[s.n(8)]
}

func (s *hostile) limit() *pb.Limit {
	l := &pb.Limit{Algorithm: pb.Algorithm(s.n(5)), Limit: s.int64(), PeriodNs: s.int64(), Burst: s.int64(),
		Slots: int32(s.int64()), Strict: s.n(2) == 1, MaxLeaseNs: s.int64()}
	if s.n(2) == 0 {
		l.Slots = int32(s.n(transport.MaxSlots + 2))
	}
	l.MaxDebt = s.int64()
	return l
}

// encodeHostile encodes m, with each badKey replaced by as many bytes that
// are not UTF-8: no generated client would send such a key.
func encodeHostile(m proto.Message) []byte {
	b, err := proto.Marshal(m)
	if err != nil {
		panic(err) // badKey is valid UTF-8, so the message encodes
	}
	return bytes.ReplaceAll(b, []byte(badKey), bytes.Repeat([]byte{0xff}, len(badKey)))
}

// FuzzGRPCServer sends random bytes, and random requests that are valid but
// hostile (extreme numbers, limits just passed, keys that are not UTF-8,
// reused seqs, requests above MaxRequestBytes), to a real gRPC server of a
// real one-node cluster, made once per fuzzing process. Every call must get
// a status within callTimeout: never a crash or a hang, never INTERNAL; and
// a request that does not decode or fails its Validate function must be
// INVALID_ARGUMENT (RESOURCE_EXHAUSTED above MaxRequestBytes) and append
// nothing to the Raft log.
//
// Under `go test` it runs its seed corpus, the f.Add calls below.
func FuzzGRPCServer(f *testing.F) {
	g := newGRPCNode(f)
	for i := range fuzzMethods {
		m := uint8(i)
		f.Add(m, true, []byte{})
		f.Add(m, true, []byte{0x10, 0xff})                                              // a truncated varint
		f.Add(m, true, []byte{0x0a, 0x7f, 'c'})                                         // a length past the end
		f.Add(m, false, []byte{})                                                       // zero values
		f.Add(m, false, []byte{3, 4, 9, 2, 1, 10, 8, 7, 1, 4, 8, 9, 7, 7, 1, 9, 0, 65}) // extremes
	}
	// The bytes of a hostile request are its choices, in the order of the
	// hostile constructors above.
	const (
		acquire, release, setLimit, getLimit = 0, 1, 2, 3
		charge, extend, restrict             = 6, 7, 8
	)
	for _, seed := range []struct {
		method uint8
		data   []byte
	}{
		{setLimit, []byte{1, 1, 1, 4, 12, 0, 0, 0, 0, 1}},                         // k: 10 an hour
		{acquire, []byte{1, 1, 10, 0, 1, 1, 1, 1, 0, 0, 1, 4, 12, 0, 0, 0, 0, 1}}, // a (seq 1) leases 1 of k
		{release, []byte{1, 2, 1, 0, 1, 1, 1}},                                    // a (seq 2) releases lease 1, 1 unused
		{release, []byte{1, 2, 1, 0, 1, 1, 0}},                                    // seq 2 again, another body
		{acquire, []byte{1, 2, 10, 0, 1, 1, 1, 1, 0, 1}},                          // seq 2 again, as an Acquire
		{setLimit, []byte{6, 1, 1, 4, 12, 0, 0, 0, 0, 1}},                         // a key that is not UTF-8
		{getLimit, []byte{6}},                                                     // the same
		{setLimit, []byte{2, 1, 2, 4, 2, 0, 0, 6, 0, 0, 64}},                      // a window of 2ns in 64 slots
		{release, []byte{1, 1, 1, 0, 0}},                                          // 16385 unused: above MaxRequestBytes
		{release, []byte{1, 1, 1, 0, 1, 9}},                                       // 9 unused counts
		{charge, []byte{2, 1, 0, 1, 1, 1, 4, 1}},                                  // b (seq 1) charges 10 of k
		{charge, []byte{2, 1, 0, 1, 1, 1, 1, 1}},                                  // seq 1 again, another body
		{acquire, []byte{2, 2, 10, 0, 1, 1, 1, 1, 1, 1}},                          // b (seq 2) leases 1 of k
		{extend, []byte{2, 3, 1, 10, 0}},                                          // b (seq 3) extends lease 1 by a minute
		{restrict, []byte{1, 3, 0, 1, 1, 1, 12, 1, 1}},                            // a (seq 3) blocks k for an hour
		{restrict, []byte{1, 3, 0, 1, 1, 1, 10, 1, 1}},                            // seq 3 again, another body
		{restrict, []byte{1, 2, 0, 1, 1, 1, 0, 1, 1}},                             // an item that restricts nothing
	} {
		f.Add(seed.method, false, seed.data)
	}

	f.Fuzz(func(t *testing.T, method uint8, raw bool, data []byte) {
		m := fuzzMethods[int(method)%len(fuzzMethods)]
		payload := data
		if !raw {
			payload = encodeHostile(m.hostile(&hostile{b: data}))
		}
		// The oracle: does the request decode, and does it pass its
		// Validate function?
		req := m.request()
		invalid := proto.Unmarshal(payload, req) != nil || m.validate(req) != nil
		tooLarge := len(payload) > transport.MaxRequestBytes

		before := g.logIndexes()
		ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
		defer cancel()
		err := g.invokeRaw(ctx, m.name, payload)
		st, ok := status.FromError(err)
		if !ok {
			t.Fatalf("%s %x: error without a status: %v", m.name, payload, err)
		}
		switch code := st.Code(); {
		case code == codes.DeadlineExceeded:
			t.Fatalf("%s %x: no answer within %v", m.name, payload, callTimeout)
		case code == codes.Internal || code == codes.Unknown || code == codes.Unimplemented:
			t.Fatalf("%s %x: %v", m.name, payload, err)
		case tooLarge && code != codes.ResourceExhausted:
			t.Fatalf("%s of %d bytes: %v, want ResourceExhausted", m.name, len(payload), err)
		case !tooLarge && invalid && code != codes.InvalidArgument:
			t.Fatalf("%s %x is invalid: %v, want InvalidArgument", m.name, payload, err)
		}
		if invalid || tooLarge {
			if after := g.logIndexes(); after != before {
				t.Fatalf("%s %x is invalid, yet the log (last, commit index) went from %v to %v",
					m.name, payload, before, after)
			}
		}
	})
}
