package transport_test

import (
	"strings"
	"testing"

	"github.com/leasehold/leasehold/internal/pki"
	"github.com/leasehold/leasehold/internal/pki/pkitest"
	"github.com/leasehold/leasehold/transport"
	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

// An operator's change over gRPC is logged with who made it and on what
// key: an attacker's review found a limit set or deleted that way left no
// trace of who did it. Reads and refused calls are not logged as changes.
func TestOperatorChangesAreLogged(t *testing.T) {
	d := pkitest.New(t)
	cfg := transport.DefaultGuardConfig()
	cfg.TLS = d.Source(pkitest.Node("n1")).ServerConfig(nil)
	addr, _, logs := serveGuarded(t, okService(), cfg)
	c := dialTLS(t, addr, d.Source(pkitest.Operator("alice")).ClientConfig(true, pki.RequireRole(pki.RoleNode)))
	if _, err := c.SetLimit(t.Context(), &pb.SetLimitRequest{Key: "acme:gpt-4.1", Limit: goodLimit()}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.DeleteLimit(t.Context(), &pb.DeleteLimitRequest{Key: "tenant-7"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.GetLimit(t.Context(), &pb.GetLimitRequest{Key: "read-only"}); err != nil {
		t.Fatal(err)
	}
	app := dialTLS(t, addr, d.Source(pkitest.Client("app")).ClientConfig(true, pki.RequireRole(pki.RoleNode)))
	if _, err := app.SetLimit(t.Context(), &pb.SetLimitRequest{Key: "refused", Limit: goodLimit()}); err == nil {
		t.Fatal("a client's SetLimit was served")
	}
	for _, want := range []string{
		`msg="operator change" who=operator/alice method=SetLimit target=acme:gpt-4.1`,
		`msg="operator change" who=operator/alice method=DeleteLimit target=tenant-7`,
	} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("no %q in the log:\n%s", want, logs.String())
		}
	}
	if n := strings.Count(logs.String(), "operator change"); n != 2 {
		t.Errorf("%d changes logged, want 2 (a read and a refused call are none):\n%s", n, logs.String())
	}
}
