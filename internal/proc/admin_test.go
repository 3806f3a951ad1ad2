package proc

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"

	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

// follower answers Status as a follower in term 7, and nothing else.
type follower struct {
	pb.UnimplementedLeaseholdServer
}

func (follower) Status(context.Context, *pb.StatusRequest) (*pb.StatusResponse, error) {
	return &pb.StatusResponse{NodeState: pb.NodeState_NODE_STATE_FOLLOWER, Term: 7}, nil
}

// TestNoLeaderErrorWhenEveryNodeAnswers: with every node answering and none
// leading (an election under way), Leader's error wrapped a nil join and
// printed "no node is the leader: %!w(<nil>)"; it must say what they
// answered.
func TestNoLeaderErrorWhenEveryNodeAnswers(t *testing.T) {
	var addrs []string
	for range 2 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		s := grpc.NewServer()
		pb.RegisterLeaseholdServer(s, follower{})
		go s.Serve(ln)
		t.Cleanup(s.Stop)
		addrs = append(addrs, ln.Addr().String())
	}
	a, err := Dial(addrs)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	_, err = a.Leader(t.Context(), 5*time.Second)
	if !errors.Is(err, ErrNoLeader) {
		t.Fatalf("Leader: %v; want ErrNoLeader", err)
	}
	if msg := err.Error(); strings.Contains(msg, "%!") || !strings.Contains(msg, "NODE_STATE_FOLLOWER in term 7") {
		t.Fatalf("Leader's error %q; want the nodes' answers", msg)
	}
}
