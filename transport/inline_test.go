package transport_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/leasehold/leasehold/internal/pki"
	"github.com/leasehold/leasehold/internal/pki/pkitest"
	"github.com/leasehold/leasehold/transport"
	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

// limitStore is a Service that keeps keys' limits as fsm does: an item of
// a key without a limit creates it from its inline limit, or fails the
// request with a *NoLimitError naming the first such key in item order
// (ErrNoLimit naming none if keyUnknown, as a retry answered from the
// dedup table is); an inline limit on a key with one is ignored.
type limitStore struct {
	*fakeService
	mu         sync.Mutex
	limits     map[string]*pb.Limit
	inlines    int  // requests that reached the service with an inline limit
	keyUnknown bool // NoLimit answers name no key
}

func newLimitStore(keys ...string) *limitStore {
	s := &limitStore{limits: make(map[string]*pb.Limit)}
	for _, k := range keys {
		s.limits[k] = &pb.Limit{Algorithm: pb.Algorithm_TOKEN_BUCKET, Limit: 5, PeriodNs: int64(time.Hour)}
	}
	s.fakeService = &fakeService{handle: func(_ context.Context, req proto.Message) (proto.Message, error) {
		type item interface {
			GetKey() string
			GetLimit() *pb.Limit
		}
		var items []item
		var resp proto.Message
		switch r := req.(type) {
		case *pb.AcquireRequest:
			for _, it := range r.GetItems() {
				items = append(items, it)
			}
			resp = &pb.AcquireResponse{Allowed: true}
		case *pb.ChargeRequest:
			for _, it := range r.GetItems() {
				items = append(items, it)
			}
			resp = &pb.ChargeResponse{}
		case *pb.RestrictRequest:
			for _, it := range r.GetItems() {
				items = append(items, it)
			}
			resp = &pb.RestrictResponse{}
		default:
			return okService().handle(context.Background(), req)
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		for _, it := range items {
			if it.GetLimit() != nil {
				s.inlines++
			}
			if s.limits[it.GetKey()] == nil && it.GetLimit() == nil {
				if s.keyUnknown {
					return nil, fmt.Errorf("%w: key %s has no limit", transport.ErrNoLimit, it.GetKey())
				}
				return nil, &transport.NoLimitError{Key: it.GetKey(), Reason: "key " + it.GetKey() + " has no limit"}
			}
		}
		for _, it := range items {
			if s.limits[it.GetKey()] == nil {
				s.limits[it.GetKey()] = it.GetLimit()
			}
		}
		return resp, nil
	}}
	return s
}

func (s *limitStore) has(key string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.limits[key] != nil
}

func (s *limitStore) inlineCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.inlines
}

// inlineRPCs are the RPCs that carry inline limits (AcquireStream one
// Acquire on a new stream), each of key with
// lim inline (nil: none) and otherwise valid; count 0 makes the request
// invalid.
var inlineRPCs = []struct {
	name string
	call func(ctx context.Context, c pb.LeaseholdClient, key string, lim *pb.Limit, count int64) error
}{
	{"Acquire", func(ctx context.Context, c pb.LeaseholdClient, key string, lim *pb.Limit, count int64) error {
		_, err := c.Acquire(ctx, &pb.AcquireRequest{ClientId: []byte("c"), Seq: 1,
			Items: []*pb.AcquireItem{{Key: key, Count: count, Limit: lim}}})
		return err
	}},
	{"AcquireStream", func(ctx context.Context, c pb.LeaseholdClient, key string, lim *pb.Limit, count int64) error {
		_, err := acquireOnStream(ctx, c, &pb.AcquireRequest{ClientId: []byte("c"), Seq: 1,
			Items: []*pb.AcquireItem{{Key: key, Count: count, Limit: lim}}})
		return err
	}},
	{"Charge", func(ctx context.Context, c pb.LeaseholdClient, key string, lim *pb.Limit, count int64) error {
		_, err := c.Charge(ctx, &pb.ChargeRequest{ClientId: []byte("c"), Seq: 1,
			Items: []*pb.ChargeItem{{Key: key, Tokens: count, Limit: lim}}})
		return err
	}},
	{"Restrict", func(ctx context.Context, c pb.LeaseholdClient, key string, lim *pb.Limit, count int64) error {
		_, err := c.Restrict(ctx, &pb.RestrictRequest{ClientId: []byte("c"), Seq: 1,
			Items: []*pb.RestrictItem{{Key: key, BlockedForNs: count, Limit: lim}}})
		return err
	}},
}

// TestClientInlineLimitsRefusedByTheGuard: under InlineLimitsRefuse, a
// client certificate's Acquire, Charge or Restrict whose inline limit would
// define an absent key is PERMISSION_DENIED (logged and counted as a
// denial), and the request that reached the service carried no inline
// limit, so nothing could create the key; on a key with a limit the call
// is served. Operators, and clients under InlineLimitsCreate (the
// default), create keys as before; an invalid request is INVALID_ARGUMENT
// whoever sends it, and a request with no inline limit is unchanged.
func TestClientInlineLimitsRefusedByTheGuard(t *testing.T) {
	lim := &pb.Limit{Algorithm: pb.Algorithm_TOKEN_BUCKET, Limit: 1000, PeriodNs: int64(time.Hour)}
	d := pkitest.New(t)
	node := d.Source(pkitest.Node("n1"))
	for _, rule := range []transport.InlineLimits{0, transport.InlineLimitsCreate, transport.InlineLimitsRefuse} {
		for _, id := range []pki.Identity{pkitest.Client("app"), pkitest.Operator("alice")} {
			t.Run(fmt.Sprintf("%v/%v", rule, id), func(t *testing.T) {
				svc := newLimitStore("set")
				cfg := transport.DefaultGuardConfig()
				cfg.TLS = node.ServerConfig(nil)
				cfg.ClientInlineLimits = rule
				addr, g, logs := serveGuarded(t, svc, cfg)
				c := dialTLS(t, addr, d.Source(id).ClientConfig(true, pki.RequireRole(pki.RoleNode)))
				refused := rule == transport.InlineLimitsRefuse && id.Role == pki.RoleClient

				for _, r := range inlineRPCs {
					key := "absent-" + r.name
					err := r.call(t.Context(), c, key, lim, 1)
					if refused {
						if status.Code(err) != codes.PermissionDenied || !errors.Is(transport.FromStatus(err), transport.ErrPermissionDenied) {
							t.Errorf("%s of an absent key with an inline limit: %v; want PERMISSION_DENIED", r.name, err)
						}
						if svc.has(key) {
							t.Errorf("%s: the refused call created %s", r.name, key)
						}
					} else if err != nil || !svc.has(key) {
						t.Errorf("%s of an absent key with an inline limit: %v, created %v; want it created", r.name, err, svc.has(key))
					}
					if err := r.call(t.Context(), c, "set", lim, 1); err != nil {
						t.Errorf("%s of a key with a limit, inline limit: %v", r.name, err)
					}
					if err := r.call(t.Context(), c, "absent-bare", nil, 1); !errors.Is(transport.FromStatus(err), transport.ErrNoLimit) {
						t.Errorf("%s of an absent key, no inline limit: %v; want ErrNoLimit", r.name, err)
					}
					if err := r.call(t.Context(), c, key+"-invalid", lim, 0); status.Code(err) != codes.InvalidArgument {
						t.Errorf("%s, invalid, with an inline limit: %v; want INVALID_ARGUMENT", r.name, err)
					}
				}
				wantInlines, wantDenied := 2*len(inlineRPCs), uint64(0) // absent and "set"
				if refused {
					wantInlines, wantDenied = 0, uint64(len(inlineRPCs))
				}
				if n := svc.inlineCount(); n != wantInlines {
					t.Errorf("%d requests reached the service with an inline limit; want %d", n, wantInlines)
				}
				if got := g.Stats().Denied; got != wantDenied {
					t.Errorf("Stats().Denied = %d; want %d", got, wantDenied)
				}
				for _, r := range inlineRPCs {
					line := `msg="permission denied" who=client/app method=` + r.name + " needs=operator"
					if strings.Contains(logs.String(), line) != refused {
						t.Errorf("denial of %s logged: %v; want %v:\n%s", r.name, !refused, refused, logs.String())
					}
				}
			})
		}
	}
}

func TestGuardConfigValidateClientInlineLimits(t *testing.T) {
	for _, v := range []transport.InlineLimits{-1, transport.InlineLimitsRefuse + 1} {
		err := transport.GuardConfig{ClientInlineLimits: v}.Validate()
		if err == nil || !strings.Contains(err.Error(), "ClientInlineLimits") {
			t.Errorf("Validate(ClientInlineLimits: %d) = %v; want it to name ClientInlineLimits", v, err)
		}
	}
	if got := transport.DefaultGuardConfig().ClientInlineLimits; got != transport.InlineLimitsCreate {
		t.Errorf("default ClientInlineLimits = %v; want create", got)
	}
}

// item is one item of a multi-item request: its key, and whether it
// carries an inline limit.
type item struct {
	key    string
	inline bool
}

// inlineRPCsOf are the three RPCs that carry inline limits, each of items
// (otherwise valid).
var inlineRPCsOf = []struct {
	name string
	call func(ctx context.Context, c pb.LeaseholdClient, lim *pb.Limit, items []item) error
}{
	{"Acquire", func(ctx context.Context, c pb.LeaseholdClient, lim *pb.Limit, items []item) error {
		req := &pb.AcquireRequest{ClientId: []byte("c"), Seq: 1}
		for _, it := range items {
			req.Items = append(req.Items, &pb.AcquireItem{Key: it.key, Count: 1, Limit: limIf(it.inline, lim)})
		}
		_, err := c.Acquire(ctx, req)
		return err
	}},
	{"Charge", func(ctx context.Context, c pb.LeaseholdClient, lim *pb.Limit, items []item) error {
		req := &pb.ChargeRequest{ClientId: []byte("c"), Seq: 1}
		for _, it := range items {
			req.Items = append(req.Items, &pb.ChargeItem{Key: it.key, Tokens: 1, Limit: limIf(it.inline, lim)})
		}
		_, err := c.Charge(ctx, req)
		return err
	}},
	{"Restrict", func(ctx context.Context, c pb.LeaseholdClient, lim *pb.Limit, items []item) error {
		req := &pb.RestrictRequest{ClientId: []byte("c"), Seq: 1}
		for _, it := range items {
			req.Items = append(req.Items, &pb.RestrictItem{Key: it.key, BlockedForNs: 1, Limit: limIf(it.inline, lim)})
		}
		_, err := c.Restrict(ctx, req)
		return err
	}},
}

func limIf(ok bool, lim *pb.Limit) *pb.Limit {
	if ok {
		return lim
	}
	return nil
}

// TestRefusedInlineLimitsDeniedKeysThatSentNone: under InlineLimitsRefuse,
// a client's request on a key without a limit was PERMISSION_DENIED
// whenever any of its items had its inline limit removed, also when the
// key found without a limit had sent none (the caller tried to create
// nothing; with inline limits allowed, or as an operator, it is
// NOT_FOUND). PERMISSION_DENIED is for a key whose inline limit was
// removed; a key that sent none is NOT_FOUND, in Acquire, Charge and
// Restrict alike. When the node cannot name the key (an answer repeated
// from its dedup table) a request with an inline limit removed stays
// PERMISSION_DENIED.
func TestRefusedInlineLimitsDeniedKeysThatSentNone(t *testing.T) {
	lim := &pb.Limit{Algorithm: pb.Algorithm_TOKEN_BUCKET, Limit: 1000, PeriodNs: int64(time.Hour)}
	d := pkitest.New(t)
	node := d.Source(pkitest.Node("n1"))
	tests := []struct {
		name       string
		items      []item
		keyUnknown bool
		want       codes.Code
	}{
		{"bare absent key alone", []item{{"absent-bare", false}}, false, codes.NotFound},
		{"inline on a set key, bare absent key", []item{{"set", true}, {"absent-bare", false}}, false, codes.NotFound},
		{"bare absent key first, inline absent key", []item{{"absent-bare", false}, {"absent-inline", true}}, false, codes.NotFound},
		{"inline absent key first, bare absent key", []item{{"absent-inline", true}, {"absent-bare", false}}, false, codes.PermissionDenied},
		{"bare set key, inline absent key", []item{{"set", false}, {"absent-inline", true}}, false, codes.PermissionDenied},
		{"inline absent key alone", []item{{"absent-inline", true}}, false, codes.PermissionDenied},
		{"key unknown, inline on a set key, bare absent key", []item{{"set", true}, {"absent-bare", false}}, true, codes.PermissionDenied},
		{"key unknown, bare absent key alone", []item{{"absent-bare", false}}, true, codes.NotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			svc := newLimitStore("set")
			svc.keyUnknown = tt.keyUnknown
			cfg := transport.DefaultGuardConfig()
			cfg.TLS = node.ServerConfig(nil)
			cfg.ClientInlineLimits = transport.InlineLimitsRefuse
			addr, g, _ := serveGuarded(t, svc, cfg)
			c := dialTLS(t, addr, d.Source(pkitest.Client("app")).ClientConfig(true, pki.RequireRole(pki.RoleNode)))
			for _, r := range inlineRPCsOf {
				err := r.call(t.Context(), c, lim, tt.items)
				if got := status.Code(err); got != tt.want {
					t.Errorf("%s: %v; want %v", r.name, err, tt.want)
				}
				if tt.want == codes.NotFound && !errors.Is(transport.FromStatus(err), transport.ErrNoLimit) {
					t.Errorf("%s: %v does not match ErrNoLimit", r.name, err)
				}
				for _, it := range tt.items {
					if it.key != "set" && svc.has(it.key) {
						t.Errorf("%s created %s", r.name, it.key)
					}
				}
			}
			wantDenied := uint64(0)
			if tt.want == codes.PermissionDenied {
				wantDenied = uint64(len(inlineRPCsOf))
			}
			if got := g.Stats().Denied; got != wantDenied {
				t.Errorf("Stats().Denied = %d; want %d", got, wantDenied)
			}
		})
	}
}
