package fsm

import (
	"fmt"
	"time"
)

// Status is the outcome of one command. Values are stable (they are stored in
// snapshots with the dedup table) and never reused.
type Status uint8

// Statuses. A denial is a result like any other; the Invalid statuses say which
// part of the input was wrong, and Result.Message says how.
const (
	// StatusOK: applied. For an Acquire, every item was granted; for a
	// Charge, every item was charged, in part if it reached its debt cap
	// (ItemResult.Granted less than its Tokens); for an Extend, the lease is
	// live (its TTL may be what it was).
	StatusOK Status = 1
	// StatusDenied: an Acquire that could not be granted now; nothing taken.
	StatusDenied Status = 2
	// StatusNoLimit: an Acquire, Charge or Restrict named a key that has no
	// limit and gave none. Nothing applied.
	StatusNoLimit Status = 3
	// StatusStale: the (client, seq) pair is older than every result the
	// machine still remembers for the client; it was not applied again.
	StatusStale Status = 4
	// StatusLeaseGone: a Release or Extend of a lease that is unknown,
	// expired or already released. Nothing changed.
	StatusLeaseGone Status = 5

	// StatusInvalidKey: a key is empty or longer than MaxKeyLen bytes.
	StatusInvalidKey Status = 16
	// StatusInvalidCount: a count <= 0, a want below the count, unused
	// tokens out of range, tokens to charge <= 0, or a remaining below 0
	// other than NoRemaining.
	StatusInvalidCount Status = 17
	// StatusInvalidLimit: a limit definition that cannot be honoured.
	StatusInvalidLimit Status = 18
	// StatusInvalidTTL: a negative lease TTL (Acquire, Extend) or block.
	StatusInvalidTTL Status = 19
	// StatusInvalidRequest: anything else malformed (no items, too many items,
	// a key named twice, a lease of another client, a Charge or Restrict of
	// a key that is not a token bucket, a Restrict item that restricts
	// nothing).
	StatusInvalidRequest Status = 20
	// StatusSeqReused: the client's seq was applied before, to a command
	// with a different body (another type, items, TTL, lease or unused
	// counts). Nothing was applied and the first result stays remembered;
	// neither answer would be right for this command.
	StatusSeqReused Status = 21
)

// Invalid reports whether s rejects the command's input.
func (s Status) Invalid() bool { return s >= StatusInvalidKey }

func (s Status) String() string {
	switch s {
	case StatusOK:
		return "ok"
	case StatusDenied:
		return "denied"
	case StatusNoLimit:
		return "no-limit"
	case StatusStale:
		return "stale"
	case StatusLeaseGone:
		return "lease-gone"
	case StatusInvalidKey:
		return "invalid-key"
	case StatusInvalidCount:
		return "invalid-count"
	case StatusInvalidLimit:
		return "invalid-limit"
	case StatusInvalidTTL:
		return "invalid-ttl"
	case StatusInvalidRequest:
		return "invalid-request"
	case StatusSeqReused:
		return "seq-reused"
	}
	return fmt.Sprintf("status(%d)", uint8(s))
}

// Result is what applying one command decided.
type Result struct {
	Status Status
	// Message explains an Invalid status in words a user can act on.
	Message string
	// Time is the log time, in nanoseconds, at which the command applied.
	Time int64
	// LeaseID identifies the lease an Acquire granted; 0 for a central
	// decision (TTL 0), which needs no release. For an Extend, the lease's.
	LeaseID uint64
	// TTL is the granted lease's life from Time. The holder must stop
	// spending before TTL has passed on its own clock, measured from when it
	// sent the request. For an Extend, the lease's life from Time after it:
	// the holder may count its units held, and its unused tokens
	// refundable, until then, but spends no token of it after its first
	// TTL. For a central acquire with a Span, the span its sliding windows
	// counted it over (LeaseID 0), to be spent within it, measured the same
	// way; 0 for any other central decision.
	TTL time.Duration
	// RetryAfter is, for a denial, when the same acquire would first succeed
	// if nothing else happened; limiter.Never if it never can. For a lease
	// granted short of its Want (a contended key), it is the pace: how long
	// the client should leave the key alone before its next fair share is
	// there, at most the lease's TTL. 0 for any other grant. For a Charge
	// or Restrict, the time until every one of its keys, untouched, would
	// grant a token again (0 if they can now; limiter.Never if one never
	// can): how long it blocked the keys, or how long their debt takes to
	// repay.
	RetryAfter time.Duration
	// Items holds one entry per item of an Acquire, Charge or Restrict, in
	// order.
	Items []ItemResult
	// Lessees is, for an Acquire that named its keys' limits (granted or
	// denied), the most lessees of any of its keys: the distinct clients
	// holding live leases on it, the requesting client counted once whether
	// or not it holds one — the n its fair share divides by. It is advice
	// for the client's choice between leasing and central decisions, not
	// part of the decision: the dedup table does not keep it, so a retried
	// Acquire's answer has 0 (unknown).
	Lessees int32
	// NoLimitKey is, for StatusNoLimit, the key of the first item (in
	// order) whose key had no limit and that gave none. Like Lessees it is
	// not kept by the dedup table, so a retried command's answer has ""
	// (unknown); "" for any other status.
	NoLimitKey string
	// Pieces and Piece describe a pieced lease (Acquire.Paced): it holds
	// Granted/Pieces tokens in each of the last Pieces buckets of its life,
	// bucket k being log time [k·Piece, (k+1)·Piece) (the last one ends at
	// Time+TTL, or holds it), each to be spent only within its own bucket
	// and not before Time. 0 for any other result. Unlike Lessees they are
	// part of the grant, and remembered with it.
	Pieces int32
	Piece  time.Duration
	// Decided is true when this apply decided the command, false when the
	// answer is one the dedup table remembered from an earlier entry (a
	// retry of a command applied before), or a Stale or SeqReused result.
	// The entry that carried a command was stamped after the request that
	// put it there arrived, so only a Decided result's Time may be placed
	// after that request was sent (a retried Acquire's pieces,
	// DESIGN.md). Like Lessees it is not kept by the dedup table, nor in
	// snapshots.
	Decided bool
	// Found is, for a DeleteLimit, whether the key had a limit to delete;
	// false for every other command. The key's limit is replicated state,
	// so every replica finds the same.
	Found bool
	// Deleted is, for a DeleteLimits, what it did; nil for every other
	// command and for an invalid DeleteLimits.
	Deleted *Deleted
}

// Deleted is the outcome of a DeleteLimits.
type Deleted struct {
	// Keys is how many keys it deleted.
	Keys int
	// LastKey is the last key it examined (deleted or kept as pinned):
	// the StartAfter of the next DeleteLimits. "" when it examined none.
	LastKey string
	// More is whether keys it did not examine may match: it examined
	// MaxDeleteExamined and more matching keys followed the last.
	More bool
}

// ItemResult is the outcome for one key of an Acquire, a Charge or a
// Restrict. It is two numbers, as it was before Charge and Restrict: every
// acquire allocates its items, and a wider item made the apply path allocate
// a third more bytes (DESIGN.md, "What the budget commands cost").
type ItemResult struct {
	// Granted is, for an Acquire, the tokens granted: 0 if denied, else
	// Count up to Want. For a Charge, the tokens charged: the rest of the
	// item's Tokens was forgiven, as charging it would have taken the key
	// more than its MaxDebt below empty. For a Restrict, the tokens it took
	// away from what the key held (level before less level after; 0 when
	// the key was restricted as much already).
	Granted int64
	// Remaining is, for an Acquire, what a further take could get right
	// after this one, at least 0. For a Charge or a Restrict, the key's
	// level right after it, in whole tokens (a strict bucket's reserve left
	// out): negative while the key owes debt or is blocked.
	Remaining int64
}

func invalid(s Status, format string, args ...any) Result {
	return Result{Status: s, Message: fmt.Sprintf(format, args...)}
}
