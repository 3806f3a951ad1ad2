package transport_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/leasehold/leasehold/internal/pki"
	"github.com/leasehold/leasehold/internal/pki/pkitest"
	"github.com/leasehold/leasehold/transport"
	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

// An operator's change over gRPC is logged with who made it, on what key,
// and its outcome: an attacker's review found a limit set or deleted that
// way left no trace of who did it, and a later review a failed change
// left none either. Reads, refused calls and a follower's NotLeader are
// not logged as changes.
func TestOperatorChangesAreLogged(t *testing.T) {
	d := pkitest.New(t)
	cfg := transport.DefaultGuardConfig()
	cfg.TLS = d.Source(pkitest.Node("n1")).ServerConfig(nil)
	ok := okService()
	svc := &fakeService{handle: func(ctx context.Context, req proto.Message) (proto.Message, error) {
		switch r := req.(type) {
		case *pb.DeleteLimitRequest:
			if r.GetKey() == "on-a-follower" {
				return nil, &transport.NotLeaderError{LeaderID: "n2"}
			}
			found := true
			return &pb.DeleteLimitResponse{Found: &found}, nil
		case *pb.DeleteLimitsRequest:
			return &pb.DeleteLimitsResponse{Deleted: 1000, LastKey: "bot/0999", More: true}, nil
		case *pb.SetLimitRequest:
			if r.GetKey() == "failed" {
				return nil, errors.New("the disk is full")
			}
		}
		return ok.handle(ctx, req)
	}}
	addr, _, logs := serveGuarded(t, svc, cfg)
	c := dialTLS(t, addr, d.Source(pkitest.Operator("alice")).ClientConfig(true, pki.RequireRole(pki.RoleNode)))
	if _, err := c.SetLimit(t.Context(), &pb.SetLimitRequest{Key: "acme:gpt-4.1", Limit: goodLimit()}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.DeleteLimit(t.Context(), &pb.DeleteLimitRequest{Key: "tenant-7"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.DeleteLimits(t.Context(), &pb.DeleteLimitsRequest{Prefix: "bot/", UnpinnedOnly: true}); err != nil {
		t.Fatal(err)
	}
	// A bulk delete that may take the operator's own limits says so (a
	// review: the line read the same with and without unpinned_only).
	if _, err := c.DeleteLimits(t.Context(), &pb.DeleteLimitsRequest{Prefix: "ops/", StartAfter: "ops/41"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.DeleteLimit(t.Context(), &pb.DeleteLimitRequest{Key: "on-a-follower"}); err == nil {
		t.Fatal("the follower's DeleteLimit answered")
	}
	if _, err := c.SetLimit(t.Context(), &pb.SetLimitRequest{Key: "failed", Limit: goodLimit()}); err == nil {
		t.Fatal("the failing SetLimit answered")
	}
	if _, err := c.GetLimit(t.Context(), &pb.GetLimitRequest{Key: "read-only"}); err != nil {
		t.Fatal(err)
	}
	app := dialTLS(t, addr, d.Source(pkitest.Client("app")).ClientConfig(true, pki.RequireRole(pki.RoleNode)))
	if _, err := app.SetLimit(t.Context(), &pb.SetLimitRequest{Key: "refused", Limit: goodLimit()}); err == nil {
		t.Fatal("a client's SetLimit was served")
	}
	for _, want := range []string{
		`msg="operator change" who=operator/alice method=SetLimit target=acme:gpt-4.1` + "\n",
		`msg="operator change" who=operator/alice method=DeleteLimit target=tenant-7 found=true`,
		`msg="operator change" who=operator/alice method=SetLimit target=failed err=`,
		`msg="operator change" who=operator/alice method=DeleteLimits target=bot/* unpinned_only=true start_after="" deleted=1000 more=true`,
		`msg="operator change" who=operator/alice method=DeleteLimits target=ops/* unpinned_only=false start_after=ops/41 deleted=1000 more=true`,
	} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("no %q in the log:\n%s", want, logs.String())
		}
	}
	if n := strings.Count(logs.String(), "operator change"); n != 5 {
		t.Errorf("%d changes logged, want 5 (a read, a refused call and a follower's NotLeader are none):\n%s", n, logs.String())
	}
}
