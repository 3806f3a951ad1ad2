package transport

import (
	"testing"
	"time"

	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

// A valid acquire, as the SDK sends it (with an inline limit), is checked
// without allocating: field names are built only for an error. The node
// validates each request as the server does, so this runs twice per write.
func TestValidateAcquireDoesNotAllocate(t *testing.T) {
	req := &pb.AcquireRequest{ClientId: []byte("client"), Seq: 2, AckedBelow: 1, TtlNs: int64(time.Second),
		Items: []*pb.AcquireItem{
			{Key: "tenant-42:gpt-4.1", Count: 1, Want: 10, Limit: &pb.Limit{Algorithm: pb.Algorithm_TOKEN_BUCKET, Limit: 100, PeriodNs: int64(time.Second)}},
			{Key: "tenant-42:tokens", Count: 500, Limit: &pb.Limit{Algorithm: pb.Algorithm_TOKEN_BUCKET, Limit: 40000, PeriodNs: int64(time.Minute)}},
		}}
	if err := ValidateAcquire(req); err != nil {
		t.Fatalf("ValidateAcquire: %v", err)
	}
	if n := testing.AllocsPerRun(100, func() { _ = ValidateAcquire(req) }); n != 0 {
		t.Errorf("ValidateAcquire of a valid request: %v allocs, want 0", n)
	}
}
