package client

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"google.golang.org/grpc"

	"github.com/leasehold/leasehold/transport"
	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

// An Option configures a Client; pass options to [Dial].
type Option func(*config)

// config is a Client's configuration. Every field has a default (see
// defaultConfig) and a range (see validate).
type config struct {
	// leaseTTL is the longest lease the client asks for; 0 asks for as long
	// as each key allows (the cluster caps a lease at the key's MaxLease).
	leaseTTL time.Duration
	// drift is ρ, the largest clock-rate error assumed between this process
	// and the cluster's leader, as a fraction (1e-3 = 0.1%).
	drift float64
	// policy is what a Limiter does once the cluster is unreachable and no
	// valid lease is left, unless its Limit names its own.
	policy FailurePolicy
	logger *slog.Logger
	// dialOpts are appended after the client's own (its transport
	// credentials, unless these carry them).
	dialOpts []grpc.DialOption
	// clientID identifies this client's requests for the cluster's dedup
	// table; random 16 bytes by default.
	clientID []byte
	// targetPeriod is how long the tokens of one grant should last at the
	// current rate of use.
	targetPeriod time.Duration
	// requestTimeout bounds each background or Allow-driven exchange with
	// the cluster (retries included), each attempt within it, and Close.
	requestTimeout time.Duration
	// trace receives lease events (WithTrace); nil: none.
	trace *Trace
	// security is WithTLS, WithTLSConfig or WithInsecure (tls.go).
	security security
	// reservationTTL is how long a Budget's reservation keeps its leases
	// without Settle, Cancel or KeepAlive (WithReservationTTL).
	reservationTTL time.Duration
	// idleTimeout closes Limiters and Budgets idle that long; 0: never
	// (WithIdleTimeout).
	idleTimeout time.Duration
	// api, if set, replaces each endpoint's gRPC client (a test seam:
	// export_test.go's WithAPIForTest).
	api func(endpoint string) pb.LeaseholdClient
}

func defaultConfig() config {
	return config{
		drift:          1e-3,
		policy:         FailClosed,
		logger:         slog.Default(),
		targetPeriod:   time.Second,
		requestTimeout: 2 * time.Second,
		reservationTTL: 5 * time.Minute,
	}
}

// validate reports every problem with c at once.
func (c *config) validate() error {
	var errs []error
	if c.leaseTTL < 0 || c.leaseTTL > transport.MaxLeaseTTL {
		errs = append(errs, fmt.Errorf("lease TTL %v must be in [0, %v]", c.leaseTTL, transport.MaxLeaseTTL))
	}
	if !(c.drift >= 0 && c.drift <= 0.1) { // also rejects NaN
		errs = append(errs, fmt.Errorf("clock drift %v must be in [0, 0.1]", c.drift))
	}
	if err := validatePolicy(c.policy); err != nil {
		errs = append(errs, err)
	}
	if c.logger == nil {
		errs = append(errs, errors.New("logger must not be nil"))
	}
	if n := len(c.clientID); c.clientID != nil && (n == 0 || n > transport.MaxClientIDLen) {
		errs = append(errs, fmt.Errorf("client id is %d bytes; it must be 1 to %d", n, transport.MaxClientIDLen))
	}
	if c.targetPeriod <= 0 {
		errs = append(errs, fmt.Errorf("target period %v must be positive", c.targetPeriod))
	}
	if c.requestTimeout <= 0 {
		errs = append(errs, fmt.Errorf("request timeout %v must be positive", c.requestTimeout))
	}
	if c.reservationTTL < time.Second || c.reservationTTL > time.Hour {
		errs = append(errs, fmt.Errorf("reservation TTL %v must be in [1s, 1h]", c.reservationTTL))
	}
	if c.idleTimeout < 0 {
		errs = append(errs, fmt.Errorf("idle timeout %v must not be negative", c.idleTimeout))
	}
	if err := c.security.validate(c.dialOpts); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// WithLeaseTTL sets the longest lease the client asks for. The cluster caps
// every lease at its key's MaxLease (2s unless the limit says otherwise), so
// the default, 0, means "as long as each key allows". Range: 0 to 1 minute.
// Shorter leases mean more round trips; they do not tighten the cluster's
// over-admission bound, which only the key's MaxLease sets.
func WithLeaseTTL(d time.Duration) Option {
	return func(c *config) { c.leaseTTL = d }
}

// WithClockDrift sets ρ, the largest rate error assumed between this
// process's monotonic clock and the cluster leader's, as a fraction: 1e-3
// (the default) is 0.1%, or 3.6s an hour. A lease granted for ttl is used for
// ttl·(1−ρ)/(1+ρ) from the moment its request was sent. Range: 0 to 0.1.
func WithClockDrift(rho float64) Option {
	return func(c *config) { c.drift = rho }
}

// WithFailurePolicy sets what every Limiter does once the cluster is
// unreachable and its leases have run out or expired: [FailClosed] (the
// default), [FailOpen] or a [FallbackShare]. A Limit's own FailurePolicy
// overrides it.
func WithFailurePolicy(p FailurePolicy) Option {
	return func(c *config) { c.policy = p }
}

// WithLogger sets the logger; the default is slog.Default(). The client logs
// at Warn when the cluster becomes unreachable or a key is rejected (once per
// Limiter), and at Info when it is reachable again.
func WithLogger(l *slog.Logger) Option {
	return func(c *config) { c.logger = l }
}

// WithDialOptions adds gRPC dial options for every endpoint, after the
// client's own. Transport credentials given here (grpc.WithTransportCredentials
// or grpc.WithCredentialsBundle) count as the Client's choice of security,
// as gRPC counts them: then pass none of WithTLS, WithTLSConfig and
// WithInsecure, and Dial fails if both say something. Without credentials
// here, one of those three is required (ErrNoTransportSecurity).
func WithDialOptions(opts ...grpc.DialOption) Option {
	return func(c *config) { c.dialOpts = append(c.dialOpts, opts...) }
}

// WithClientID sets the id the cluster's dedup table knows this client by,
// 1 to 64 bytes. The default is 16 random bytes, and it must stay unique per
// live client: two clients sharing an id would get each other's answers.
// Meant for tests.
func WithClientID(id []byte) Option {
	return func(c *config) { c.clientID = append([]byte{}, id...) }
}

// WithTargetPeriod sets how long one grant should last at the recent rate of
// use; it is capped by the lease's life. The default is 1s. Longer periods
// mean fewer round trips and more tokens held (and possibly wasted) per client.
func WithTargetPeriod(d time.Duration) Option {
	return func(c *config) { c.targetPeriod = d }
}

// WithRequestTimeout bounds each exchange with the cluster that has no
// caller's context: a lease refresh (its retries included), an Allow that
// must ask the cluster, and the releases sent by Close. It also bounds each
// single attempt of a Wait. The default is 2s.
func WithRequestTimeout(d time.Duration) Option {
	return func(c *config) { c.requestTimeout = d }
}

// A FailurePolicy is what a Limiter does once the cluster is unreachable and
// no valid lease is left: [FailClosed], [FailOpen] or a [FallbackShare]. Held
// leases are always spent first, up to their deadline.
type FailurePolicy interface {
	isFailurePolicy()
}

// FailMode is a FailurePolicy without parameters.
type FailMode int

// The parameterless failure policies. Values are stable.
const (
	// FailClosed denies: Allow returns false and Wait waits for the cluster
	// until its context ends. The default.
	FailClosed FailMode = 1
	// FailOpen admits everything: Allow returns true and Wait returns nil.
	FailOpen FailMode = 2
)

func (FailMode) isFailurePolicy() {}

// String returns "fail-closed" or "fail-open".
func (m FailMode) String() string {
	switch m {
	case FailClosed:
		return "fail-closed"
	case FailOpen:
		return "fail-open"
	}
	return fmt.Sprintf("FailMode(%d)", int(m))
}

// FallbackShare admits, on each client, a share of the key's limit — the
// limit divided by Clients, with the burst divided the same way (at least 1)
// — for at most For after the fallback began, then fails closed. Set Clients
// to the number of processes that share the key, so that together they stay
// within the limit. It never admits the whole limit per client.
type FallbackShare struct {
	// Clients is the number of live clients the limit is split among; >= 1.
	Clients int
	// For is how long the fallback lasts, from the moment the last lease
	// expired with the cluster unreachable; > 0.
	For time.Duration
}

func (FallbackShare) isFailurePolicy() {}

func validatePolicy(p FailurePolicy) error {
	switch p := p.(type) {
	case FailMode:
		if p != FailClosed && p != FailOpen {
			return fmt.Errorf("unknown failure policy %v", p)
		}
	case FallbackShare:
		var errs []error
		if p.Clients < 1 {
			errs = append(errs, fmt.Errorf("fallback share: clients %d must be at least 1", p.Clients))
		}
		if p.For <= 0 {
			errs = append(errs, fmt.Errorf("fallback share: duration %v must be positive", p.For))
		}
		return errors.Join(errs...)
	case nil:
		return errors.New("failure policy must not be nil")
	default:
		return fmt.Errorf("unknown failure policy %T", p)
	}
	return nil
}
