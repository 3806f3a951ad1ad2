package client

import "time"

// A Trace receives a Client's lease events as they happen: each Acquire
// (lease or central decision) and its outcome, each admission with the lease
// it was spent from, and each Release. It exists for tests and for chaos
// harnesses (jepsen/) that record what a client did and check it against
// what the cluster allowed; an application has no need for it.
//
// Every field is optional. Callbacks run synchronously on the goroutine of
// the event — AdmitInfo on the goroutine calling Allow or Wait, before that
// call returns, sometimes with a Limiter's lock held — so they must be quick,
// must be safe for concurrent use, and must not call into the Client or its
// Limiters. Without WithTrace, tracing costs one nil check per event.
type Trace struct {
	// AcquireStart is called once per Acquire, just after the SDK read the
	// send time a lease's life is measured from and before the first
	// attempt is sent. Retries of the same request (same Seq) are not
	// reported.
	AcquireStart func(AcquireStartInfo)
	// AcquireDone is called once per Acquire when the SDK stops trying:
	// with the cluster's answer, or with the error that ended it.
	AcquireDone func(AcquireDoneInfo)
	// Admit is called for each admission: once per lease an AllowN or WaitN
	// spent from (more than once only when n spans leases), or once with
	// LeaseID 0 for a central or fallback admission. It is not called for a
	// denial.
	Admit func(AdmitInfo)
	// ReleaseStart is called once per Release, before the first attempt.
	ReleaseStart func(ReleaseStartInfo)
	// ReleaseDone is called once per Release when the SDK stops trying.
	ReleaseDone func(ReleaseDoneInfo)
}

// WithTrace makes the Client report its lease events to t; nil (the
// default) reports nothing. The Client keeps t and does not copy it: do not
// change its fields after Dial.
func WithTrace(t *Trace) Option {
	return func(c *config) { c.trace = t }
}

// AcquireStartInfo describes an Acquire as it is first sent.
type AcquireStartInfo struct {
	ClientID []byte // the Client's id (WithClientID); do not modify
	Seq      uint64 // the request's sequence number, the same on every retry
	Key      string
	Count    int64         // tokens the request needs at least
	Want     int64         // tokens it would like (Count <= Want)
	TTL      time.Duration // lease life asked for; 0 asks for a central decision
	// Sent is when the request was sent, on the Client's monotonic clock:
	// a granted lease is used until Sent + TTL·(1−ρ)/(1+ρ) at most.
	Sent time.Time
}

// AcquireDoneInfo describes how an Acquire ended.
type AcquireDoneInfo struct {
	ClientID []byte
	Seq      uint64
	Key      string
	// Err is nil when the cluster answered (Allowed says how). Otherwise
	// the SDK gave up: a rejection (transport.ErrInvalid, ErrNoLimit) did
	// not apply, and any other error leaves the outcome unknown — the
	// cluster may have granted, and then the lease simply expires.
	Err     error
	Allowed bool
	// LeaseID is the granted lease, 0 for a central decision.
	LeaseID uint64
	Granted int64         // tokens granted
	TTL     time.Duration // lease life granted, from Sent; a window's central grant: the span it was counted over
	// LogTime is the cluster's log time at which the Acquire applied.
	LogTime time.Duration
	// RetryAfter is the cluster's hint when denied (negative: never), or
	// the pace of a lease granted short of its want (see Limiter).
	RetryAfter time.Duration
	// Pieces and Piece describe a sliding window's pieced lease: Granted
	// in Pieces pieces, each spendable only within its bucket of log time
	// of width Piece (transport's AcquireResponse.pieces). 0 otherwise.
	Pieces int32
	Piece  time.Duration
	// Queued and Answered are how long the answering node held the
	// request before it stamped LogTime and after, on its clock
	// (transport's AcquireResponse.queued_ns and answered_ns): what of
	// the round trip was the cluster's. Queued is 0 for the answer to a
	// retry that the cluster remembered rather than decided (Decided
	// false); either is 0 when unknown.
	Queued, Answered time.Duration
	// Decided: the cluster says the entry it reports on decided this
	// answer (transport's AcquireResponse.decided); false for an answer
	// remembered from an earlier entry, and from a node that does not say.
	Decided bool
}

// AdmitSource says where an admitted token came from. Values are stable.
type AdmitSource int

const (
	// AdmitLeased: spent from a lease (LeaseID != 0).
	AdmitLeased AdmitSource = 1
	// AdmitCentral: a central decision of the cluster (LeaseID 0).
	AdmitCentral AdmitSource = 2
	// AdmitFallback: admitted by the failure policy while the cluster was
	// unreachable (LeaseID 0).
	AdmitFallback AdmitSource = 3
)

// String returns "leased", "central" or "fallback".
func (s AdmitSource) String() string {
	switch s {
	case AdmitLeased:
		return "leased"
	case AdmitCentral:
		return "central"
	case AdmitFallback:
		return "fallback"
	}
	return "AdmitSource(?)"
}

// AdmitInfo describes one admission.
type AdmitInfo struct {
	Key     string
	N       int64  // tokens admitted
	LeaseID uint64 // the lease they were spent from; 0 unless Source is AdmitLeased
	Source  AdmitSource
}

// ReleaseStartInfo describes a Release as it is first sent.
type ReleaseStartInfo struct {
	ClientID []byte
	Seq      uint64
	LeaseID  uint64
	Unused   int64 // tokens given back
}

// ReleaseDoneInfo describes how a Release ended.
type ReleaseDoneInfo struct {
	ClientID []byte
	Seq      uint64
	LeaseID  uint64
	// Err is nil when the cluster answered; otherwise the outcome is
	// unknown (the tokens come back when the lease expires anyway).
	Err error
	// Released is false when the cluster no longer knew the lease
	// (expired or already released).
	Released bool
	LogTime  time.Duration
}

// admit reports an admission of n tokens of key; t may be nil.
func (t *Trace) admit(key string, n int64, leaseID uint64, src AdmitSource) {
	if t != nil && t.Admit != nil {
		t.Admit(AdmitInfo{Key: key, N: n, LeaseID: leaseID, Source: src})
	}
}
