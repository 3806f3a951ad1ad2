package client

import (
	"errors"
	"fmt"
	"math"
	"time"
	"unicode/utf8"

	"github.com/leasehold/leasehold/transport"
	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

// Algorithm selects how a key limits. Values are stable.
type Algorithm int

const (
	// TokenBucket admits Rate tokens per Per on average, and up to Burst at
	// once. The zero Algorithm means TokenBucket.
	TokenBucket Algorithm = 1
	// SlidingWindow admits at most Rate tokens in any window of length Per.
	SlidingWindow Algorithm = 2
)

// String returns "token-bucket" or "sliding-window".
func (a Algorithm) String() string {
	switch a {
	case 0, TokenBucket:
		return "token-bucket"
	case SlidingWindow:
		return "sliding-window"
	}
	return fmt.Sprintf("Algorithm(%d)", int(a))
}

// A Limit defines a key's limit. The cluster keeps the first definition it
// sees for a key (sent with the first Acquire, or set by an operator); a
// different Limit sent later is ignored until the key is forgotten.
type Limit struct {
	// Algorithm is TokenBucket (the default) or SlidingWindow.
	Algorithm Algorithm
	// Rate is the tokens admitted per Per: refilled per Per (token bucket)
	// or admitted in any window of length Per (sliding window). Positive.
	Rate int64
	// Per is the refill period or the window length. Positive.
	Per time.Duration
	// Burst is a token bucket's capacity: the most admitted at once. 0
	// means Rate. Ignored by a sliding window.
	Burst int64
	// Slots is the number of sub-windows of a sliding window, 1 to 64; 0
	// means 10. Ignored by a token bucket.
	Slots int
	// Strict makes a token bucket admit at most Burst + Rate·Δ in any
	// interval Δ, over all clients, by holding back Rate·MaxLease of the
	// burst; if that is the whole burst the key grants no leases and every
	// request is a central decision. Not strict, the cluster's bound is
	// Burst + Rate·(Δ + MaxLease).
	Strict bool
	// MaxLease is the longest lease the cluster grants on this key, the Λ
	// of its over-admission bound. 0 means 2s; at most 1 minute.
	MaxLease time.Duration
	// FailurePolicy overrides the Client's (WithFailurePolicy) for this
	// key; nil means the Client's.
	FailurePolicy FailurePolicy
}

// proto returns l as sent with each Acquire.
func (l Limit) proto() *pb.Limit {
	p := &pb.Limit{
		Algorithm:  pb.Algorithm_TOKEN_BUCKET,
		Limit:      l.Rate,
		PeriodNs:   int64(l.Per),
		Burst:      l.Burst,
		Slots:      int32(min(max(l.Slots, math.MinInt32), math.MaxInt32)),
		Strict:     l.Strict,
		MaxLeaseNs: int64(l.MaxLease),
	}
	switch l.Algorithm {
	case SlidingWindow:
		p.Algorithm = pb.Algorithm_SLIDING_WINDOW
	case 0, TokenBucket:
	default:
		p.Algorithm = pb.Algorithm(l.Algorithm) // rejected by validation
	}
	return p
}

// check validates key and l as the cluster would, plus the failure policy.
func (l Limit) check(key string) error {
	var errs []error
	if err := checkKey(key); err != nil {
		errs = append(errs, err)
	}
	if l.Algorithm != 0 && l.Algorithm != TokenBucket && l.Algorithm != SlidingWindow {
		errs = append(errs, &transport.InvalidError{Field: "limit.algorithm",
			Reason: fmt.Sprintf("unknown algorithm %d; want TokenBucket or SlidingWindow", int(l.Algorithm))})
	} else if err := transport.ValidateLimit("limit", l.proto()); err != nil {
		errs = append(errs, err)
	}
	if l.FailurePolicy != nil {
		if err := validatePolicy(l.FailurePolicy); err != nil {
			errs = append(errs, &transport.InvalidError{Field: "limit.failure_policy", Reason: err.Error()})
		}
	}
	return errors.Join(errs...)
}

// checkKey validates key by the cluster's own rule (transport's key check:
// 1 to MaxKeyLen bytes), and as valid UTF-8: a key is a proto string, which
// gRPC refuses to encode otherwise. Checked here, a bad key makes the
// Limiter StateInvalid with an *transport.InvalidError naming "key"; sent,
// it would fail to encode and look like an unreachable cluster, and a
// FailOpen policy would then admit everything.
func checkKey(key string) error {
	if err := transport.ValidateGetLimit(&pb.GetLimitRequest{Key: key}); err != nil {
		return err
	}
	// transport's key check does not test UTF-8 yet; this is the SDK's one
	// place that does until it does.
	if !utf8.ValidString(key) {
		return &transport.InvalidError{Field: "key", Reason: fmt.Sprintf("key %q is not valid UTF-8", key)}
	}
	return nil
}

// burst returns the most tokens the limit admits at once.
func (l Limit) burst() int64 {
	if l.Algorithm == SlidingWindow || l.Burst == 0 {
		return l.Rate
	}
	return l.Burst
}
