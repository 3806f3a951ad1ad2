package e2e

import (
	"context"
	"errors"
	"regexp"
	"testing"
	"time"

	"github.com/leasehold/leasehold/internal/proc"
	"github.com/leasehold/leasehold/transport"
	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

// generous is the limit an attacker with a client certificate sends inline,
// hoping it replaces a key's: a thousand an hour where the operator allowed
// five.
var generous = &pb.Limit{Algorithm: pb.Algorithm_TOKEN_BUCKET, Limit: 1000, PeriodNs: int64(time.Hour), Burst: 1000}

// inlineCaller sends Acquire, Charge and Restrict with an inline limit, as
// one client id, on whichever node leads.
type inlineCaller struct {
	t     *testing.T
	admin *proc.Admin
	id    string
	seq   uint64
}

func (c *inlineCaller) call(fn func(ctx context.Context, api pb.LeaseholdClient, seq uint64) error) error {
	c.t.Helper()
	c.seq++
	seq := c.seq
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err := proc.OnLeader(ctx, c.admin, func(ctx context.Context, api pb.LeaseholdClient) (struct{}, error) {
		return struct{}{}, fn(ctx, api, seq)
	})
	return err
}

// acquire asks for one token of key with lim inline and reports whether it
// was granted.
func (c *inlineCaller) acquire(key string, lim *pb.Limit) (bool, error) {
	c.t.Helper()
	var allowed bool
	err := c.call(func(ctx context.Context, api pb.LeaseholdClient, seq uint64) error {
		resp, err := api.Acquire(ctx, &pb.AcquireRequest{ClientId: []byte(c.id), Seq: seq,
			Items: []*pb.AcquireItem{{Key: key, Count: 1, Limit: lim}}})
		allowed = resp.GetAllowed()
		return err
	})
	return allowed, err
}

// charge charges one token of key with lim inline.
func (c *inlineCaller) charge(key string, lim *pb.Limit) error {
	c.t.Helper()
	return c.call(func(ctx context.Context, api pb.LeaseholdClient, seq uint64) error {
		_, err := api.Charge(ctx, &pb.ChargeRequest{ClientId: []byte(c.id), Seq: seq,
			Items: []*pb.ChargeItem{{Key: key, Tokens: 1, Limit: lim}}})
		return err
	})
}

// restrict "lowers" key to a thousand tokens (which lowers nothing of a
// smaller key) with lim inline.
func (c *inlineCaller) restrict(key string, lim *pb.Limit) error {
	c.t.Helper()
	remaining := int64(1000)
	return c.call(func(ctx context.Context, api pb.LeaseholdClient, seq uint64) error {
		_, err := api.Restrict(ctx, &pb.RestrictRequest{ClientId: []byte(c.id), Seq: seq,
			Items: []*pb.RestrictItem{{Key: key, Remaining: &remaining, Limit: lim}}})
		return err
	})
}

// limitOf returns key's limit as the leader has it (nil: none).
func limitOf(t *testing.T, c *procCluster, key string) *pb.Limit {
	t.Helper()
	got := onLeader(t, c, 20*time.Second, func(ctx context.Context, api pb.LeaseholdClient) (*pb.GetLimitResponse, error) {
		return api.GetLimit(ctx, &pb.GetLimitRequest{Key: key})
	})
	if !got.GetFound() {
		return nil
	}
	return got.GetLimit()
}

// inlineRoles dials c as a client certificate (app) and an operator's
// (ops), and sets key "set" to five an hour as the operator.
func inlineRoles(t *testing.T, c *procCluster) (app, ops *inlineCaller) {
	t.Helper()
	appFiles, err := c.Certs().Client("app")
	if err != nil {
		t.Fatal(err)
	}
	opFiles, err := c.Certs().Operator("ops")
	if err != nil {
		t.Fatal(err)
	}
	app = &inlineCaller{t: t, admin: dialAs(t, c, proc.Security{TLS: &appFiles}), id: "e2e-inline-app"}
	ops = &inlineCaller{t: t, admin: dialAs(t, c, proc.Security{TLS: &opFiles}), id: "e2e-inline-ops"}
	onLeader(t, c, 20*time.Second, func(ctx context.Context, api pb.LeaseholdClient) (*pb.SetLimitResponse, error) {
		return api.SetLimit(ctx, &pb.SetLimitRequest{Key: "set", Limit: hourlyFive})
	})
	return app, ops
}

// TestClientRoleInlineLimitsNeverChangeALimit is the attack a client
// certificate can try with the inline limit of Acquire, Charge and
// Restrict, over real TLS, against a node with the default
// --client-inline-limits: it defines absent keys' limits (as the SDK's
// Limiter and Budget do), but never changes a key's limit, whether an
// operator set it or another client's inline limit defined it first; the
// key "set" still admits five an hour.
func TestClientRoleInlineLimitsNeverChangeALimit(t *testing.T) {
	c := startCluster(t, 1)
	app, _ := inlineRoles(t, c)

	// An absent key: each of the three calls creates it from its inline limit.
	for _, tc := range []struct {
		key  string
		call func(string, *pb.Limit) error
	}{
		{"new-acquire", func(k string, l *pb.Limit) error { _, err := app.acquire(k, l); return err }},
		{"new-charge", app.charge},
		{"new-restrict", app.restrict},
	} {
		if err := tc.call(tc.key, generous); err != nil {
			t.Fatalf("%s as client/app: %v", tc.key, err)
		}
		if got := limitOf(t, c, tc.key); got.GetLimit() != generous.GetLimit() {
			t.Errorf("%s: limit %v after a client's inline limit; want the client's (created)", tc.key, got)
		}
	}

	// A key with a limit keeps it, whoever defined it.
	other := &inlineCaller{t: t, admin: app.admin, id: "e2e-inline-other"}
	if _, err := other.acquire("first", hourlyFive); err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"set", "first"} {
		if _, err := app.acquire(key, generous); err != nil {
			t.Fatalf("Acquire %s: %v", key, err)
		}
		if err := app.charge(key, generous); err != nil {
			t.Fatalf("Charge %s: %v", key, err)
		}
		if err := app.restrict(key, generous); err != nil {
			t.Fatalf("Restrict %s: %v", key, err)
		}
		if got := limitOf(t, c, key); got.GetLimit() != hourlyFive.GetLimit() || got.GetBurst() != hourlyFive.GetBurst() {
			t.Errorf("%s: limit %v after a client's inline limits; want five an hour, unchanged", key, got)
		}
	}
	// But a key defined inline is not pinned: once full and unleased it is
	// forgotten (fsm's idle sweep), and the next inline limit, anyone's,
	// defines it again. Only SetLimit keeps a key's limit for good.
	brief := &pb.Limit{Algorithm: pb.Algorithm_TOKEN_BUCKET, Limit: 5, PeriodNs: int64(time.Millisecond), Burst: 5}
	if _, err := other.acquire("brief", brief); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(20 * time.Second); ; {
		// Each command sweeps a few keys.
		if _, err := other.acquire("tick", generous); err != nil {
			t.Fatal(err)
		}
		if limitOf(t, c, "brief") == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the idle key \"brief\" was never forgotten")
		}
	}
	if _, err := app.acquire("brief", generous); err != nil {
		t.Fatal(err)
	}
	if got := limitOf(t, c, "brief"); got.GetLimit() != generous.GetLimit() {
		t.Errorf("brief: limit %v after it was forgotten; want the next inline limit's", got)
	}

	// Two tokens of "set" are spent (one acquired, one charged): three more.
	for i := range 4 {
		ok, err := app.acquire("set", generous)
		if err != nil {
			t.Fatal(err)
		}
		if ok != (i < 3) {
			t.Fatalf("acquire %d of set with a generous inline limit: allowed %v; want 3 of 4", i+1, ok)
		}
	}
}

// TestClientInlineLimitsRefused: with --client-inline-limits=false a
// client certificate's inline limit creates nothing: Acquire, Charge and
// Restrict of a key without a limit are PERMISSION_DENIED, logged with who
// and what, and the key stays absent; on a key an operator set, the same
// calls work (the inline limit was ignored anyway). An operator's inline
// limit still creates a key.
func TestClientInlineLimitsRefused(t *testing.T) {
	c := startCluster(t, 3, func(l *proc.Layout) {
		l.ExtraArgs = func(proc.NodeSpec) []string { return []string{"--client-inline-limits=false"} }
	})
	app, ops := inlineRoles(t, c)

	for _, tc := range []struct {
		name string
		call func(string, *pb.Limit) error
	}{
		{"Acquire", func(k string, l *pb.Limit) error { _, err := app.acquire(k, l); return err }},
		{"Charge", app.charge},
		{"Restrict", app.restrict},
	} {
		key := "absent-" + tc.name
		if err := tc.call(key, generous); !errors.Is(err, transport.ErrPermissionDenied) {
			t.Errorf("%s of a key without a limit, inline limit, as client/app: %v; want PERMISSION_DENIED", tc.name, err)
		}
		if got := limitOf(t, c, key); got != nil {
			t.Errorf("%s: the refused call created the limit %v", key, got)
		}
		if err := tc.call("set", generous); err != nil {
			t.Errorf("%s of the operator's key with an inline limit, as client/app: %v", tc.name, err)
		}
	}
	if got := limitOf(t, c, "set"); got.GetLimit() != hourlyFive.GetLimit() {
		t.Errorf("set: limit %v; want five an hour, unchanged", got)
	}
	// Without an inline limit, an absent key is what it always was.
	if _, err := app.acquire("absent-bare", nil); !errors.Is(err, transport.ErrNoLimit) {
		t.Errorf("Acquire of a key without a limit, no inline limit: %v; want ErrNoLimit", err)
	}
	// Also beside an item whose inline limit was removed: the absent key
	// sent none, so the answer is NOT_FOUND naming it, not
	// PERMISSION_DENIED (it was, when any item lost its inline limit).
	err := app.call(func(ctx context.Context, api pb.LeaseholdClient, seq uint64) error {
		_, err := api.Acquire(ctx, &pb.AcquireRequest{ClientId: []byte(app.id), Seq: seq,
			Items: []*pb.AcquireItem{{Key: "set", Count: 1, Limit: generous}, {Key: "absent-mixed", Count: 1}}})
		return err
	})
	var nl *transport.NoLimitError
	if !errors.As(err, &nl) || nl.Key != "absent-mixed" || errors.Is(err, transport.ErrPermissionDenied) {
		t.Errorf("Acquire of set (inline limit) and absent-mixed (none), as client/app: %v; want NOT_FOUND naming absent-mixed", err)
	}
	if ok, err := ops.acquire("by-operator", generous); err != nil || !ok {
		t.Errorf("Acquire with an inline limit as operator/ops: %v, %v; want a token", ok, err)
	}
	if got := limitOf(t, c, "by-operator"); got.GetLimit() != generous.GetLimit() {
		t.Errorf("by-operator: limit %v; want the operator's inline limit", got)
	}

	denied := regexp.MustCompile(`msg="permission denied" who=client/app method=(Acquire|Charge|Restrict) needs=operator`)
	if !c.logged(denied) {
		t.Errorf("no node logged the denial (%v)", denied)
	}
}
