package client

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

// TestSilentLeaderIsNotBelievedAfterTimeout is the deterministic regression
// for the first chaos run's bug (seed 1, pause-leader): when a request's own
// deadline ends while its attempt waits on a leader that has stopped
// answering (SIGSTOP), that endpoint must stop being believed leader.
// Otherwise every later request goes back to it for as long as it is paused,
// though a new leader was elected at once (a 3.6s failover gap, measured).
func TestSilentLeaderIsNotBelievedAfterTimeout(t *testing.T) {
	e, err := dialEndpoints([]string{"127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"},
		[]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())})
	if err != nil {
		t.Fatal(err)
	}
	defer e.close()
	e.succeeded(0)
	// The request's deadline comes before the attempt's, as it does on a
	// real clock when both are the same length and the request's started
	// first.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	err = e.call(ctx, time.Hour, func(ctx context.Context, _ pb.LeaseholdClient) error {
		<-ctx.Done() // a stopped process answers nothing
		return status.FromContextError(ctx.Err()).Err()
	})
	if err == nil {
		t.Fatal("call to a silent endpoint succeeded")
	}
	if got := e.pick(); got == 0 {
		t.Errorf("after a timed-out request, the next goes to endpoint %d again: the silent leader is still believed", got)
	}
}
