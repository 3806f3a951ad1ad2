package transport

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/peer"

	"github.com/leasehold/leasehold/internal/connlimit"
	"github.com/leasehold/leasehold/internal/pki"
	"github.com/leasehold/leasehold/internal/ratelog"
	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

// GuardConfig configures a Guard: who may call what, and how much a node
// takes on at once. Start from DefaultGuardConfig; a zero field means its
// default. Validate reports every problem at once.
type GuardConfig struct {
	// TLS is the server's TLS configuration, normally a pki.Source's
	// ServerConfig: every client presents a certificate the CA signed, and
	// each RPC is allowed by the role the certificate names ([MethodRole]).
	// nil serves without TLS, and every caller counts as an operator: the
	// insecure mode, for loopback and local play only. Default nil.
	TLS *tls.Config

	// MaxConns is the most client connections the node holds open at once
	// past their handshake (TLS's; without TLS, the HTTP/2 preface). A
	// connection that finishes its handshake beyond it is closed at once,
	// logged and counted. Connections still in their handshake have a cap
	// of their own, MaxConns within a quarter of the file-descriptor limit
	// (after 128 kept for the rest of the node), at least 16: at that cap
	// a new connection closes the one that has been in its handshake
	// longest, so that connections that never finish one cannot keep a
	// client out. An operator's or a node's connection (with TLS) that
	// finds MaxConns open takes one of 16 more kept for them.
	// Default (0): DefaultMaxConns(), sized from the process's
	// file-descriptor limit. At least 1.
	MaxConns int

	// MaxInFlight is the most RPCs the node serves at once. One more is
	// answered at once with RESOURCE_EXHAUSTED and RetryAfter as a
	// google.rpc.RetryInfo (an *OverloadedError to clients), logged and
	// counted. It also bounds the requests waiting in the leader's write
	// queue. Default 8192; at least 1.
	MaxInFlight int

	// RetryAfter is the retry hint sent with a shed request. Default 100ms;
	// at least 1ms.
	RetryAfter time.Duration

	// HandshakeTimeout bounds a new connection's TLS and HTTP/2 handshakes
	// (grpc.ConnectionTimeout), so that a client that connects and says
	// nothing holds a handshake slot at most that long. Default 10s.
	HandshakeTimeout time.Duration

	// ClientInlineLimits is what the inline limit a client-role caller
	// sends with Acquire, Charge or Restrict may do to a key that has no
	// limit: InlineLimitsCreate defines the key's limit from it, as the
	// SDK's Limiter and Budget expect (they declare limits in code and
	// send them with every request); InlineLimitsRefuse answers such a
	// call PERMISSION_DENIED, logged and counted as Denied, and creates
	// nothing, so that only an operator's SetLimit defines limits. On a
	// key that has a limit, an inline limit changes nothing, whoever sends
	// it and whatever this says (the first definition wins, fsm's
	// DESIGN.md). Operators and nodes may always create; without TLS
	// every caller is an operator. Default (0): InlineLimitsCreate.
	ClientInlineLimits InlineLimits

	// Logger receives denials and sheds, rate-limited: a few lines at
	// once, then one a second per kind, each counting the ones left out.
	// Default (nil): slog.Default().
	Logger *slog.Logger
}

// InlineLimits is what a client role's inline limits may do to a key that
// has no limit (GuardConfig.ClientInlineLimits).
type InlineLimits int

const (
	// InlineLimitsCreate: a client's inline limit defines an absent key's
	// limit. The default.
	InlineLimitsCreate InlineLimits = iota + 1
	// InlineLimitsRefuse: a client's call that would define an absent
	// key's limit from its inline limit is PERMISSION_DENIED.
	InlineLimitsRefuse
)

func (l InlineLimits) String() string {
	switch l {
	case InlineLimitsCreate:
		return "create"
	case InlineLimitsRefuse:
		return "refuse"
	}
	return fmt.Sprintf("InlineLimits(%d)", int(l))
}

// Defaults of the GuardConfig fields.
const (
	DefaultMaxInFlight      = 8192
	DefaultRetryAfter       = 100 * time.Millisecond
	DefaultHandshakeTimeout = 10 * time.Second
)

// MaxStreamsPerConn is the most calls one client connection carries at
// once (HTTP/2's MAX_CONCURRENT_STREAMS): a gRPC client holds a call
// beyond it until one of the connection's calls ends. The SDK keeps one
// AcquireStream open per connection and makes the other calls unary, so
// 255 of them may run beside the stream; RFC 9113 advises at least 100,
// and Go's HTTP/2 server defaults to 250. Without a cap one client could
// open streams without end, each a goroutine and buffers on the node.
const MaxStreamsPerConn = 256

// minHandshakes is the least cap on connections in their handshake.
const minHandshakes = 16

// otherPortConns is what the node's other capped ports and the operators'
// reserve take of the quarter of the descriptors DefaultMaxConns leaves
// over: the HTTP port's 64 (internal/web's DefaultMaxConns), the gossip
// port's 64 (cluster's maxGossipStreams) and operatorConns. The handshake
// cap has the rest, so that all of them together leave reservedFDs for
// Raft, the store and the rest (a review found they took every descriptor
// but those at 1024).
const otherPortConns = 128 + operatorConns

// operatorConns is how many connections of operators and nodes the node
// holds beyond MaxConns, for those that find MaxConns full: a client
// certificate's idle connections, 4200 of them, had taken every MaxConns
// slot and kept every new operator connection out (an attacker's pass,
// 2026-12-07). A reserve for getting in, not the operators' pool (they
// take MaxConns slots while there are some): an operator's CLI, the
// console's forwarding and the nodes' own calls are a few at a time, and
// each descriptor it keeps is one the handshake cap does not have.
const operatorConns = 16

// maxHandshakes returns the cap on connections in their handshake for a
// MaxConns of maxConns and a limit of nofile file descriptors (0:
// unknown): MaxConns, within the quarter of the descriptors after
// reservedFDs that DefaultMaxConns leaves over less otherPortConns, and
// at least 16. The
// larger, the more connections a flood must open during a client's
// handshake to close it: against 4200 silent connections re-dialed as
// they were closed, 40 of 54 fresh clients connected with a cap of 1024
// and 132 of 132 with 4096 (DESIGN.md).
func maxHandshakes(maxConns int, nofile uint64) int {
	n := maxConns
	if nofile > reservedFDs {
		n = min(n, int((nofile-reservedFDs)/4)-otherPortConns)
	}
	return max(n, minHandshakes)
}

// Bounds of DefaultMaxConns.
const (
	minDefaultConns = 16
	maxDefaultConns = 4096
	// reservedFDs are file descriptors kept for everything else a node
	// opens: Raft connections, the store, snapshots, logs, listeners.
	reservedFDs = 128
)

// DefaultGuardConfig returns a GuardConfig with every default filled in: no
// TLS (insecure), connections sized from the file-descriptor limit.
func DefaultGuardConfig() GuardConfig {
	return GuardConfig{
		MaxConns:           DefaultMaxConns(),
		MaxInFlight:        DefaultMaxInFlight,
		RetryAfter:         DefaultRetryAfter,
		HandshakeTimeout:   DefaultHandshakeTimeout,
		ClientInlineLimits: InlineLimitsCreate,
		Logger:             slog.Default(),
	}
}

// DefaultMaxConns returns the default connection cap: three quarters of
// the file descriptors the process may open (RLIMIT_NOFILE's soft limit,
// which Go raises to the hard limit at start) after 128 kept for the rest
// of the node, within [16, 4096]: with 1024 descriptors, 672. 4096 idle
// gRPC connections take a few hundred MB; raise MaxConns for more.
func DefaultMaxConns() int { return maxConnsFor(fdLimit()) }

// maxConnsFor is DefaultMaxConns for a limit of nofile descriptors (0:
// unknown, as on systems without RLIMIT_NOFILE).
func maxConnsFor(nofile uint64) int {
	if nofile == 0 {
		return 1024
	}
	if nofile <= reservedFDs {
		return minDefaultConns
	}
	n := (nofile - reservedFDs) / 4 * 3
	return int(min(max(n, minDefaultConns), maxDefaultConns))
}

func (c GuardConfig) withDefaults() GuardConfig {
	if c.MaxConns == 0 {
		c.MaxConns = DefaultMaxConns()
	}
	if c.MaxInFlight == 0 {
		c.MaxInFlight = DefaultMaxInFlight
	}
	if c.RetryAfter == 0 {
		c.RetryAfter = DefaultRetryAfter
	}
	if c.HandshakeTimeout == 0 {
		c.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if c.ClientInlineLimits == 0 {
		c.ClientInlineLimits = InlineLimitsCreate
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// Validate reports every problem with c at once, or nil. Zero fields are
// valid: they mean their defaults.
func (c GuardConfig) Validate() error {
	var errs []error
	if c.MaxConns < 0 {
		errs = append(errs, fmt.Errorf("guard config: MaxConns %d must be at least 1 (0 means the default)", c.MaxConns))
	}
	if c.MaxInFlight < 0 {
		errs = append(errs, fmt.Errorf("guard config: MaxInFlight %d must be at least 1 (0 means the default)", c.MaxInFlight))
	}
	if c.RetryAfter < 0 || (c.RetryAfter > 0 && c.RetryAfter < time.Millisecond) {
		errs = append(errs, fmt.Errorf("guard config: RetryAfter %v must be at least 1ms (0 means the default)", c.RetryAfter))
	}
	if c.HandshakeTimeout < 0 {
		errs = append(errs, fmt.Errorf("guard config: HandshakeTimeout %v must not be negative (0 means the default)", c.HandshakeTimeout))
	}
	if c.ClientInlineLimits < 0 || c.ClientInlineLimits > InlineLimitsRefuse {
		errs = append(errs, fmt.Errorf("guard config: ClientInlineLimits %v must be InlineLimitsCreate or InlineLimitsRefuse (0 means the default)", c.ClientInlineLimits))
	}
	return errors.Join(errs...)
}

// clientMethods are the RPCs a client certificate may call; every other
// method, including ones added later (membership), needs an operator.
// Charge, Extend and Restrict are the SDK's Budget at work (a settle above
// its reservation, a long call's keep-alive, a provider's 429), sent by the
// processes that make the calls.
var clientMethods = map[string]bool{
	pb.Leasehold_Acquire_FullMethodName:       true,
	pb.Leasehold_AcquireStream_FullMethodName: true,
	pb.Leasehold_Release_FullMethodName:       true,
	pb.Leasehold_Charge_FullMethodName:        true,
	pb.Leasehold_Extend_FullMethodName:        true,
	pb.Leasehold_Restrict_FullMethodName:      true,
	pb.Leasehold_GetLimit_FullMethodName:      true,
	pb.Leasehold_Status_FullMethodName:        true,
}

// MethodRole returns the role an RPC needs, by its full gRPC name
// ("/leasehold.v1.Leasehold/Acquire"): pki.RoleClient for Acquire, AcquireStream,
// Release, Charge, Extend, Restrict, GetLimit and Status, pki.RoleOperator
// for everything else.
func MethodRole(fullMethod string) pki.Role {
	if clientMethods[fullMethod] {
		return pki.RoleClient
	}
	return pki.RoleOperator
}

// may reports whether a caller of role have may call an RPC that needs
// role need: an operator may do what a client may, and a node counts as an
// operator.
func may(have, need pki.Role) bool {
	switch need {
	case pki.RoleClient:
		return have == pki.RoleClient || have == pki.RoleOperator || have == pki.RoleNode
	case pki.RoleOperator:
		return have == pki.RoleOperator || have == pki.RoleNode
	}
	return have == need
}

// GuardStats counts what a Guard did since it was made.
type GuardStats struct {
	Conns           int64  // client connections open now, past their handshake
	Handshakes      int64  // client connections in their handshake now
	Displaced       uint64 // connections in their handshake closed for a new one
	InFlight        int64  // RPCs being served now
	ConnsShed       uint64 // connections closed at once, over MaxConns
	RequestsShed    uint64 // RPCs answered RESOURCE_EXHAUSTED, over MaxInFlight
	Denied          uint64 // RPCs answered PERMISSION_DENIED
	Unauthenticated uint64 // RPCs answered UNAUTHENTICATED
	AcceptErrors    uint64 // failed accepts (out of file descriptors, ...)
}

// Guard stands between the network and a node's Service: it authenticates
// callers by their certificates, allows each RPC by role, caps connections
// and RPCs in flight, and logs and counts what it refuses. Use its
// ServerOptions when making the grpc.Server and serve on its Listener. It
// is safe for concurrent use.
type Guard struct {
	cfg GuardConfig // with defaults

	// handshakes caps the connections in their handshake, displacing the
	// oldest; conns, MaxConns, the ones past it, shedding the newest. Both
	// log and count what they close. operators holds, beyond MaxConns, the
	// operators' and nodes' connections that find MaxConns full.
	handshakes, conns, operators *connlimit.Limit

	inflight atomic.Int64
	streams  atomic.Int64 // AcquireStreams open
	stats    struct {
		requestsShed, denied, unauthenticated, acceptErrors atomic.Uint64
	}
	denyLog, shedReqLog, acceptLog *ratelog.Limiter
}

// NewGuard returns a Guard for cfg.
func NewGuard(cfg GuardConfig) (*Guard, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	return &Guard{
		cfg:        cfg,
		handshakes: connlimit.NewDisplacing(maxHandshakes(cfg.MaxConns, fdLimit()), cfg.Logger, "overloaded: closed the connection longest in its handshake"),
		conns:      connlimit.New(cfg.MaxConns, cfg.Logger, "overloaded: closed a new connection"),
		operators:  connlimit.New(operatorConns, cfg.Logger, "overloaded: closed a new connection"),
		denyLog:    ratelog.New(time.Second, 10),
		shedReqLog: ratelog.New(time.Second, 5),
		acceptLog:  ratelog.New(time.Second, 5),
	}, nil
}

// Config returns the Guard's configuration, defaults filled in.
func (g *Guard) Config() GuardConfig { return g.cfg }

// Stats returns the Guard's counters.
func (g *Guard) Stats() GuardStats {
	return GuardStats{
		Conns:           g.conns.Open() + g.operators.Open(),
		Handshakes:      g.handshakes.Open(),
		Displaced:       g.handshakes.Displaced(),
		InFlight:        g.inflight.Load(),
		ConnsShed:       g.conns.Shed(),
		RequestsShed:    g.stats.requestsShed.Load(),
		Denied:          g.stats.denied.Load(),
		Unauthenticated: g.stats.unauthenticated.Load(),
		AcceptErrors:    g.stats.acceptErrors.Load(),
	}
}

// ServerOptions returns the options a grpc.Server needs for the Guard:
// transport credentials (TLS if set, else plain text) that move a
// connection from the handshake cap to MaxConns once its handshake is
// done, the interceptors that check roles and cap RPCs in flight, the
// handshake timeout, MaxStreamsPerConn, and the keepalive Timeout that
// Listener sets as each connection's TCP_USER_TIMEOUT (an option given
// after these that changes it leaves the two apart).
func (g *Guard) ServerOptions() []grpc.ServerOption {
	creds := insecure.NewCredentials()
	if g.cfg.TLS != nil {
		creds = credentials.NewTLS(g.cfg.TLS)
	}
	return []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(g.unary),
		grpc.ChainStreamInterceptor(g.stream),
		grpc.ConnectionTimeout(g.cfg.HandshakeTimeout),
		grpc.MaxConcurrentStreams(MaxStreamsPerConn),
		grpc.KeepaliveParams(keepalive.ServerParameters{Timeout: keepaliveTimeout}),
		grpc.Creds(&handshakeCreds{TransportCredentials: creds, g: g}),
	}
}

// keepaliveTimeout is how long the node waits for a client to acknowledge
// what it sent, a keepalive ping (gRPC's keepalive Timeout) or data (TCP's
// TCP_USER_TIMEOUT), before it closes the connection: gRPC's default.
// gRPC sets the socket option itself only on a *net.TCPConn (grpc-go
// v1.85 internal/syscall.SetTCPUserTimeout), which Listener's connections
// are not, so Listener sets it.
const keepaliveTimeout = 20 * time.Second

func (g *Guard) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	id, err := g.admit(ctx, info.FullMethod)
	if err != nil {
		return nil, err
	}
	defer g.inflight.Add(-1)
	if id.Role == pki.RoleClient && g.cfg.ClientInlineLimits == InlineLimitsRefuse {
		return g.withoutInlineLimits(ctx, id, info.FullMethod, req, handler)
	}
	resp, err := handler(ctx, req)
	g.audit(id, info.FullMethod, req, resp, err)
	return resp, err
}

// audit logs an operator's change asked of this node, with its outcome:
// who, what, the key or member it named, and the error or, for a delete,
// whether there was a limit. A follower's NotLeader is no outcome (the
// caller asks the leader next). The console logs its own (internal/web);
// without this, a limit set or a member removed over gRPC left no trace of
// who did it.
func (g *Guard) audit(id pki.Identity, method string, req, resp any, err error) {
	var target string
	switch r := req.(type) {
	case *pb.SetLimitRequest:
		target = r.GetKey()
	case *pb.DeleteLimitRequest:
		target = r.GetKey()
	case *pb.DeleteLimitsRequest:
		target = r.GetPrefix() + "*"
	case *pb.RemoveMemberRequest:
		target = r.GetId()
	default:
		return
	}
	attrs := []any{"who", id.String(), "method", shortMethod(method), "target", target}
	switch d, _ := resp.(*pb.DeleteLimitResponse); {
	case err != nil && errors.Is(FromStatus(err), ErrNotLeader):
		return
	case err != nil:
		attrs = append(attrs, "err", err)
	case d != nil && d.Found != nil:
		attrs = append(attrs, "found", d.GetFound())
	}
	if r, ok := req.(*pb.DeleteLimitsRequest); ok {
		// Whether the operator's own limits could go, and where this
		// entry of a run began: the same prefix logs once per 1000 keys.
		attrs = append(attrs, "unpinned_only", r.GetUnpinnedOnly(), "start_after", r.GetStartAfter())
	}
	if bulk, ok := resp.(*pb.DeleteLimitsResponse); ok && err == nil {
		attrs = append(attrs, "deleted", bulk.GetDeleted(), "more", bulk.GetMore())
	}
	g.cfg.Logger.Info("operator change", attrs...)
}

func (g *Guard) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if info.FullMethod == pb.Leasehold_AcquireStream_FullMethodName {
		// The stream takes no in-flight slot for its life, or idle streams
		// would take every one (MaxStreamsPerConn bounds them instead):
		// each Acquire on it is admitted as a unary one would be
		// (Server.AcquireStream asks the streamGuard in the context).
		id, err := g.authorize(ss.Context(), info.FullMethod)
		if err != nil {
			return ToStatus(err)
		}
		// Node-wide, at most MaxInFlight open (the bound a stream's slot
		// gave before): MaxStreamsPerConn alone let 256 per connection.
		if n := g.streams.Add(1); n > int64(g.cfg.MaxInFlight) {
			g.streams.Add(-1)
			total := g.stats.requestsShed.Add(1)
			g.shedReqLog.Log(g.cfg.Logger, slog.LevelWarn, "overloaded: refused a stream",
				"method", shortMethod(info.FullMethod), "remote", remoteAddr(ss.Context()), "max_streams", g.cfg.MaxInFlight,
				"retry_after", g.cfg.RetryAfter, "shed_total", total)
			return ToStatus(&OverloadedError{RetryAfter: g.cfg.RetryAfter})
		}
		defer g.streams.Add(-1)
		ss = &guardedStream{ServerStream: ss, ctx: context.WithValue(ss.Context(), streamGuardKey{}, &streamGuard{g: g, id: id})}
		return handler(srv, ss)
	}
	if _, err := g.admit(ss.Context(), info.FullMethod); err != nil {
		return err
	}
	defer g.inflight.Add(-1)
	return handler(srv, ss)
}

// streamGuard admits each Acquire of an AcquireStream whose opening the
// Guard allowed: an in-flight slot of its own (or RESOURCE_EXHAUSTED), and
// the caller's inline limits refused as for a unary Acquire.
type streamGuard struct {
	g  *Guard
	id pki.Identity // the caller, checked when the stream opened
}

type streamGuardKey struct{}

// guardedStream is a ServerStream whose context carries a streamGuard.
type guardedStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *guardedStream) Context() context.Context { return s.ctx }

// message serves one request of the stream with handler as the unary
// interceptor serves a call, except that the role was checked once, when
// the stream opened.
func (sg *streamGuard) message(ctx context.Context, req any, handler grpc.UnaryHandler) (any, error) {
	const method = pb.Leasehold_AcquireStream_FullMethodName // for the logs
	if err := sg.g.take(ctx, method); err != nil {
		return nil, err
	}
	defer sg.g.inflight.Add(-1)
	if sg.id.Role == pki.RoleClient && sg.g.cfg.ClientInlineLimits == InlineLimitsRefuse {
		return sg.g.withoutInlineLimits(ctx, sg.id, method, req, handler)
	}
	return handler(ctx, req)
}

// admit checks that the caller may call method, then takes an in-flight
// slot; the caller gives it back when the RPC ends. It returns the
// caller's identity (zero without TLS), or the status error to answer with.
func (g *Guard) admit(ctx context.Context, method string) (pki.Identity, error) {
	id, err := g.authorize(ctx, method)
	if err != nil {
		return id, ToStatus(err)
	}
	return id, g.take(ctx, method)
}

// take takes an in-flight slot for a call of method, or sheds it: the
// status error to answer with.
func (g *Guard) take(ctx context.Context, method string) error {
	if n := g.inflight.Add(1); n > int64(g.cfg.MaxInFlight) {
		g.inflight.Add(-1)
		total := g.stats.requestsShed.Add(1)
		g.shedReqLog.Log(g.cfg.Logger, slog.LevelWarn, "overloaded: shed a request",
			"method", shortMethod(method), "remote", remoteAddr(ctx), "max_in_flight", g.cfg.MaxInFlight,
			"retry_after", g.cfg.RetryAfter, "shed_total", total)
		return ToStatus(&OverloadedError{RetryAfter: g.cfg.RetryAfter})
	}
	return nil
}

// authorize returns the caller's identity if it may call method: always
// without TLS (with a zero identity), else if its certificate's role
// allows the method. It logs and counts a refusal.
func (g *Guard) authorize(ctx context.Context, method string) (pki.Identity, error) {
	if g.cfg.TLS == nil {
		return pki.Identity{}, nil // insecure: every caller is an operator
	}
	need := MethodRole(method)
	id, err := callerIdentity(ctx)
	if err != nil {
		total := g.stats.unauthenticated.Add(1)
		g.denyLog.Log(g.cfg.Logger, slog.LevelWarn, "unauthenticated call refused",
			"method", shortMethod(method), "remote", remoteAddr(ctx), "err", err, "unauthenticated_total", total)
		return id, fmt.Errorf("%w: %v", ErrUnauthenticated, err)
	}
	if !may(id.Role, need) {
		total := g.stats.denied.Add(1)
		g.denyLog.Log(g.cfg.Logger, slog.LevelWarn, "permission denied",
			"who", id.String(), "method", shortMethod(method), "needs", need.String(),
			"remote", remoteAddr(ctx), "denied_total", total)
		return id, fmt.Errorf("%w: %s may not call %s, which needs the %s role", ErrPermissionDenied, id, shortMethod(method), need)
	}
	return id, nil
}

// withoutInlineLimits serves a client-role call under InlineLimitsRefuse.
// A request that is valid as sent loses its inline limits before the
// handler sees it, so the command that reaches the Raft log carries none
// and cannot create a key, whatever happens to the key between now and
// its apply (a check of "does the key exist" before proposing could not
// promise that). If the state machine then finds a key without a limit
// whose inline limit was removed, one the inline limit would have
// defined, the call is PERMISSION_DENIED, logged and counted. A key that
// has a limit is served as before (the inline limit would have been
// ignored), and a key without a limit that sent none is NOT_FOUND, as it
// is for anyone: the caller tried to create nothing. An invalid request
// keeps its inline limits and is answered INVALID_ARGUMENT as anyone's is.
func (g *Guard) withoutInlineLimits(ctx context.Context, id pki.Identity, method string, req any, handler grpc.UnaryHandler) (any, error) {
	keys := stripInlineLimits(req)
	if len(keys) == 0 {
		return handler(ctx, req)
	}
	resp, err := handler(ctx, req)
	if err == nil {
		return resp, nil
	}
	noLimit := FromStatus(err)
	if !errors.Is(noLimit, ErrNoLimit) {
		return resp, err
	}
	absent := keys // which of them: unknown (an answer repeated from the dedup table)
	var nl *NoLimitError
	if errors.As(noLimit, &nl) && nl.Key != "" {
		if !slices.Contains(keys, nl.Key) {
			return resp, err // it sent no inline limit: NOT_FOUND
		}
		absent = []string{nl.Key}
	}
	total := g.stats.denied.Add(1)
	g.denyLog.Log(g.cfg.Logger, slog.LevelWarn, "permission denied",
		"who", id.String(), "method", shortMethod(method), "needs", pki.RoleOperator.String(),
		"what", "an inline limit for a key without one (client inline limits refused)", "keys", absent,
		"remote", remoteAddr(ctx), "denied_total", total)
	return nil, ToStatus(fmt.Errorf("%w: %s may not define a key's limit inline (this node refuses clients' inline limits; "+
		"an operator sets limits with SetLimit): %s of %q found a key without a limit",
		ErrPermissionDenied, id, shortMethod(method), absent))
}

// stripInlineLimits removes the inline limits of an Acquire, Charge or
// Restrict request that is valid as sent, and returns the keys whose limit
// it removed; for anything else it changes nothing and returns nil.
func stripInlineLimits(req any) []string {
	switch r := req.(type) {
	case *pb.AcquireRequest:
		if ValidateAcquire(r) == nil {
			return stripItems(r.GetItems(), func(it *pb.AcquireItem) { it.Limit = nil })
		}
	case *pb.ChargeRequest:
		if ValidateCharge(r) == nil {
			return stripItems(r.GetItems(), func(it *pb.ChargeItem) { it.Limit = nil })
		}
	case *pb.RestrictRequest:
		if ValidateRestrict(r) == nil {
			return stripItems(r.GetItems(), func(it *pb.RestrictItem) { it.Limit = nil })
		}
	}
	return nil
}

// stripItems removes, with clear, the inline limit of each item that has
// one, and returns those items' keys.
func stripItems[T interface {
	GetKey() string
	GetLimit() *pb.Limit
}](items []T, clear func(T)) []string {
	var keys []string
	for _, it := range items {
		if it.GetLimit() != nil {
			keys = append(keys, it.GetKey())
			clear(it)
		}
	}
	return keys
}

// callerIdentity returns the identity of the certificate the call's
// connection was verified with.
func callerIdentity(ctx context.Context) (pki.Identity, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return pki.Identity{}, errors.New("no peer")
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return pki.Identity{}, errors.New("not a TLS connection")
	}
	return pki.PeerIdentity(info.State)
}

func remoteAddr(ctx context.Context) string {
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		return p.Addr.String()
	}
	return ""
}

// shortMethod returns "Acquire" for "/leasehold.v1.Leasehold/Acquire".
func shortMethod(full string) string {
	if i := strings.LastIndexByte(full, '/'); i >= 0 {
		return full[i+1:]
	}
	return full
}

// Listener returns ln with its connections capped while in their
// handshake: at the cap a new connection closes the one in its handshake
// longest, logged and counted (the credentials of ServerOptions then move
// each one that finishes to MaxConns). Each connection gets the keepalive
// Timeout as its TCP_USER_TIMEOUT. Accept errors (out of file descriptors)
// are logged and counted too, and returned: grpc.Server retries them
// after a pause.
func (g *Guard) Listener(ln net.Listener) net.Listener {
	return &guardedListener{Listener: ln, g: g}
}

type guardedListener struct {
	net.Listener
	g *Guard
}

// Accept returns the next connection admitted to the handshake cap.
func (l *guardedListener) Accept() (net.Conn, error) {
	g := l.g
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			l.logAcceptError(err)
			return nil, err
		}
		if err := setUserTimeout(c, keepaliveTimeout); err != nil {
			// The connection still works; only a vanished client is noticed
			// later.
			g.acceptLog.Log(g.cfg.Logger, slog.LevelWarn, "accepted a connection without its TCP_USER_TIMEOUT",
				"remote", c.RemoteAddr().String(), "err", err)
		}
		if hc := g.handshakes.Admit(c); hc != nil {
			return &clientConn{Conn: hc, g: g}, nil
		}
	}
}

// logAcceptError logs and counts a failed accept; a closed listener is
// not one.
func (l *guardedListener) logAcceptError(err error) {
	if errors.Is(err, net.ErrClosed) {
		return
	}
	g := l.g
	total := g.stats.acceptErrors.Add(1)
	msg := "accept failed"
	if errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
		msg = "accept failed: out of file descriptors; lower --max-conns or raise the limit (ulimit -n)"
	}
	g.acceptLog.Log(g.cfg.Logger, slog.LevelError, msg, "err", err, "conns", g.conns.Open(),
		"handshakes", g.handshakes.Open(), "accept_errors_total", total)
}

// clientConn is a connection Listener accepted. Its Conn holds a slot of
// the handshake cap; once authenticated it holds one of MaxConns too,
// through admitted, and closing it gives that back. That is what makes
// the slot come back however the connection ends: gRPC closes the
// connection the credentials returned (which closes this one under it:
// TLS's Close does, the others are this one), except when setting up the
// transport fails after the handshake, when it closes only the one it
// accepted, this one (grpc-go v1.85 Server.newHTTP2Transport).
type clientConn struct {
	net.Conn
	g        *Guard
	admitted atomic.Pointer[net.Conn] // MaxConns' connection, once authenticated
}

func (c *clientConn) Close() error {
	if a := c.admitted.Load(); a != nil {
		// Whichever holds it: each gives back only its own.
		c.g.conns.Release(*a)
		c.g.operators.Release(*a)
	}
	return c.Conn.Close()
}

// privileged reports whether a connection whose handshake gave info is an
// operator's or a node's, which may take one of operatorConns when
// MaxConns are open. Without TLS no one is.
func (g *Guard) privileged(info credentials.AuthInfo) bool {
	ti, ok := info.(credentials.TLSInfo)
	if !ok || g.cfg.TLS == nil {
		return false
	}
	id, err := pki.PeerIdentity(ti.State)
	return err == nil && (id.Role == pki.RoleOperator || id.Role == pki.RoleNode)
}

// handshakeCreds is a Guard's transport credentials: the handshake of
// the credentials it wraps (TLS, or plain text's, which is none) and,
// without TLS, the client's HTTP/2 preface; then the connection leaves
// the handshake cap for MaxConns, or is closed if MaxConns are open or if
// it was displaced from the handshake cap meanwhile. Only a client that
// proved a certificate of the CA (or, without TLS, speaks HTTP/2) takes
// one of MaxConns, and only while its connection is open.
type handshakeCreds struct {
	credentials.TransportCredentials
	g *Guard
}

func (c *handshakeCreds) ServerHandshake(raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	conn, info, err := c.TransportCredentials.ServerHandshake(raw)
	if err != nil {
		return nil, nil, err
	}
	if c.g.cfg.TLS == nil {
		if conn, err = readPreface(conn); err != nil {
			raw.Close()
			return nil, nil, err
		}
	}
	// A connection that did not come through Listener (a server that
	// serves on another) was never in the handshake cap.
	cc, capped := raw.(*clientConn)
	if capped && !c.g.handshakes.Release(cc.Conn) {
		// Displaced since its handshake ended: its socket is closed, and
		// what remains of it must not hold one of MaxConns.
		conn.Close()
		return nil, nil, errConnDisplaced
	}
	admitted := c.g.conns.TryAdmit(conn)
	if admitted == nil && c.g.privileged(info) {
		admitted = c.g.operators.TryAdmit(conn)
	}
	if admitted == nil {
		// Sheds it, counted and logged, unless a slot came free meanwhile.
		admitted = c.g.conns.Admit(conn)
	}
	if conn = admitted; conn == nil {
		return nil, nil, errConnShed
	}
	if capped {
		cc.admitted.Store(&conn)
	}
	return conn, info, nil
}

func (c *handshakeCreds) Clone() credentials.TransportCredentials {
	return &handshakeCreds{TransportCredentials: c.TransportCredentials.Clone(), g: c.g}
}

var (
	errConnShed      = errors.New("overloaded: closed a new connection, over MaxConns")
	errConnDisplaced = errors.New("overloaded: the connection was closed in its handshake for a newer one")
)

// clientPreface begins every HTTP/2 connection a client opens (RFC 9113,
// section 3.4).
const clientPreface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// readPreface reads the client's HTTP/2 preface from c and returns c with
// the preface to be read again, by gRPC's transport.
func readPreface(c net.Conn) (net.Conn, error) {
	buf := make([]byte, len(clientPreface))
	if n, err := io.ReadFull(c, buf); err != nil {
		if n == 0 && err == io.EOF {
			return nil, io.EOF // closed at once: gRPC's quiet path for a probe
		}
		return nil, fmt.Errorf("reading the HTTP/2 preface: %w", err)
	}
	if string(buf) != clientPreface {
		return nil, fmt.Errorf("not an HTTP/2 client preface: %q", buf)
	}
	return &prefacedConn{Conn: c, unread: buf}, nil
}

// prefacedConn is a connection whose first bytes, read already, are read
// again. It is not safe for concurrent reads; gRPC reads a connection
// from one goroutine.
type prefacedConn struct {
	net.Conn
	unread []byte
}

func (c *prefacedConn) Read(p []byte) (int, error) {
	if len(c.unread) == 0 {
		return c.Conn.Read(p)
	}
	n := copy(p, c.unread)
	c.unread = c.unread[n:]
	return n, nil
}
