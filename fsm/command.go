package fsm

import (
	"errors"
	"fmt"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
)

// Type is the first byte of a log entry: which command follows. Values are
// stable on the wire and never reused.
type Type uint8

// Command types.
const (
	TypeSetLimit    Type = 1
	TypeDeleteLimit Type = 2
	TypeAcquire     Type = 3
	TypeRelease     Type = 4
	TypeBatch       Type = 5
	TypeCharge      Type = 6
	TypeExtend      Type = 7
	TypeRestrict    Type = 8
	// TypeDeleteLimits is a bulk delete. A replica that predates it stops
	// on it, so a leader sends it only at command level 3 (cluster).
	TypeDeleteLimits Type = 9
)

// Algorithm selects how a key is limited. Values are stable on the wire.
type Algorithm uint8

// Algorithms.
const (
	TokenBucket   Algorithm = 1
	SlidingWindow Algorithm = 2
	Concurrency   Algorithm = 3
)

func (a Algorithm) String() string {
	switch a {
	case TokenBucket:
		return "token-bucket"
	case SlidingWindow:
		return "sliding-window"
	case Concurrency:
		return "concurrency"
	}
	return fmt.Sprintf("algorithm(%d)", uint8(a))
}

// Limit defines how a key is limited. Zero fields take the defaults named on
// them; Normalize fills them in.
type Limit struct {
	// Algorithm is TokenBucket, SlidingWindow or Concurrency.
	Algorithm Algorithm
	// Limit is the tokens added per Period (token bucket), the tokens admitted
	// per window of length Period (sliding window), or the units that may be
	// held at once (concurrency). Must be positive.
	Limit int64
	// Period is the refill period or the window length; unused for
	// Concurrency. Must be positive for the other two.
	Period time.Duration
	// Burst is the token-bucket capacity. Default (0): Limit.
	Burst int64
	// Slots is the number of sliding-window sub-windows. Default (0): 10.
	Slots int32
	// Strict makes a token bucket admit at most Burst + rate·Δ in any interval
	// Δ, by holding back rate·MaxLease of the burst from every grant; when that
	// is the whole burst, the key grants no leases at all.
	Strict bool
	// MaxLease is the longest lease a grant on this key may carry; it is the Λ
	// of the over-admission bound. Default (0): DefaultMaxLease. At most
	// MaxLeaseTTL; a sliding window also caps it at its window.
	MaxLease time.Duration
	// MaxDebt is how many tokens a token bucket may owe: a Charge takes it
	// below empty, down to MaxDebt tokens below (below what a Strict
	// bucket's grants may take), and forgives the rest; refill repays the
	// debt before anything is granted again. It is the D of the bound with
	// debt (see Machine.acquire). Default (0): no debt, a Charge takes the
	// bucket to empty at most. At least 0, and refilling Burst + MaxDebt
	// must take less than limiter.MaxRefill; 0 for the other algorithms.
	MaxDebt int64
	// Buckets is how many sub-windows a sliding window counts in, when
	// more than Slots: the API sets it (cluster.limitFromPB) so that a
	// window's counting is finer than the Slots a user asks for (see
	// DESIGN.md, "Sliding windows"). Default (0): Slots, as every window
	// defined before Buckets existed counts. In [Slots, limiter.MaxSlots];
	// 0 for the other algorithms.
	Buckets int32
}

// Set limits on commands.
const (
	// MaxKeyLen is the longest key, in bytes.
	MaxKeyLen = 512
	// MaxItems is the most keys one Acquire may name.
	MaxItems = 8
	// MaxLeaseTTL is the longest lease any key grants.
	MaxLeaseTTL = time.Minute
	// DefaultMaxLease is a limit's MaxLease when it names none.
	DefaultMaxLease = 2 * time.Second
	// DefaultSlots is a sliding window's Slots when it names none.
	DefaultSlots = 10
	// MaxBlock is the longest a Restrict may block a key for. A provider's
	// longest window is a day (requests or tokens per day); a longer wait
	// in one of its headers is a misreading (a date taken for a delay),
	// and blocking a budget for longer on one header would be an outage
	// only an operator could end.
	MaxBlock = 24 * time.Hour
	// NoRemaining is RestrictItem.Remaining when the item lowers nothing.
	NoRemaining = -1
)

// Bucket bounds of WindowBuckets.
const (
	// WindowBucketsMost is the most buckets WindowBuckets gives a window
	// whose slots are fewer.
	WindowBucketsMost = 32
	// WindowBucketLeast is the shortest bucket WindowBuckets makes finer
	// than a slot: a piece of a pieced lease lasts one bucket, less a round
	// trip on the client's side, and must outlast it by enough to be spent.
	WindowBucketLeast = 50 * time.Millisecond
)

// WindowBuckets returns the buckets a sliding window of the given length
// and slots (0: DefaultSlots) counts in when its limit comes through the API:
// as many as buckets of at least WindowBucketLeast fit in the window, at most
// WindowBucketsMost, never fewer than its slots (and never more than
// limiter.MaxSlots). A window counts Slots/(Slots+1) of its limit at a
// steady pace at best; 10 slots, the default, leave a tenth of it unused,
// 32 buckets 3% (DESIGN.md, "Sliding windows").
func WindowBuckets(period time.Duration, slots int32) int32 {
	if slots == 0 {
		slots = DefaultSlots
	}
	b := int64(WindowBucketsMost)
	if period > 0 {
		b = min(b, int64(period/WindowBucketLeast))
	}
	return int32(max(b, int64(slots)))
}

// Normalize returns l with its defaults filled in. Two limits that mean the same
// thing normalize to equal values.
func (l Limit) Normalize() Limit {
	switch l.Algorithm {
	case TokenBucket:
		if l.Burst == 0 {
			l.Burst = l.Limit
		}
		l.Slots = 0
	case SlidingWindow:
		if l.Slots == 0 {
			l.Slots = DefaultSlots
		}
		l.Burst, l.Strict, l.MaxDebt = 0, false, 0
		if l.Buckets == l.Slots {
			l.Buckets = 0
		}
	case Concurrency:
		l.Period, l.Burst, l.Slots, l.Strict, l.MaxDebt = 0, 0, 0, false, 0
	}
	if l.Algorithm != SlidingWindow {
		l.Buckets = 0
	}
	if l.MaxLease == 0 {
		l.MaxLease = DefaultMaxLease
	}
	return l
}

// Command is one of *SetLimit, *DeleteLimit, *DeleteLimits, *Acquire,
// *Release, *Charge, *Extend, *Restrict or *Batch.
type Command interface {
	commandType() Type
}

// SetLimit defines, or redefines, the limit of a key. A key with a limit set
// this way keeps it until DeleteLimit, however long it is idle.
type SetLimit struct {
	Key   string
	Limit Limit
}

// DeleteLimit forgets a key: its definition and its state. A key with no
// limit is no error; its Result's Found says whether there was one.
type DeleteLimit struct {
	Key string
}

// MaxDeleteExamined is the most keys one DeleteLimits examines: deletes, or
// skips as pinned. It bounds the Apply's work after its scan (DESIGN.md,
// "Deleting keys in bulk").
const MaxDeleteExamined = 1000

// DeleteLimits forgets, as DeleteLimit does, the keys that begin with
// Prefix and sort after StartAfter in byte order: the first
// MaxDeleteExamined of them. With UnpinnedOnly it forgets only keys whose
// limit came from a client's acquire, and keeps (skips) those set by
// SetLimit; the check is made in Apply, so a key pinned by a SetLimit
// applied before this command is kept. Its Result's Deleted says what it
// did and where the next one should start.
type DeleteLimits struct {
	Prefix       string
	StartAfter   string
	UnpinnedOnly bool
}

// Item is one key of an Acquire.
type Item struct {
	// Key names the limited thing, 1 to MaxKeyLen bytes.
	Key string
	// Count is the tokens needed now, at least 1. The acquire is all or
	// nothing over the Counts of its items.
	Count int64
	// Want is the tokens the client would like in all, for a lease; the
	// machine grants Count and, of the rest, a fair share among the key's
	// lessees (see Result.RetryAfter for the pace of a short grant).
	// Default (0): Count.
	Want int64
	// Limit is used when the key has no limit yet. Optional.
	Limit *Limit
}

// Acquire takes tokens from one or more keys, all or nothing, and grants them
// as a lease of up to TTL (a central decision when TTL is 0).
type Acquire struct {
	// ClientID and Seq make the command idempotent: a retry with the same pair
	// returns the first result. An empty ClientID opts out.
	ClientID string
	Seq      uint64
	// AckedBelow tells the machine that the client has the results of every
	// Seq below it, which it may then forget.
	AckedBelow uint64
	Items      []Item
	// TTL is the lease life asked for; it is capped per key by MaxLease.
	TTL time.Duration
	// Paced asks for a sliding window's lease in pieces: the same number of
	// tokens in each of the window's buckets the lease's life covers, each
	// spendable only within its own bucket (Result.Piece). A client that
	// sets it promises to spend so. It applies to an acquire of one
	// sliding-window key with a TTL; any other acquire ignores it.
	Paced bool
	// PacedAfter, for a paced acquire, is the log time (ns) before which
	// the client wants no piece: the end of the last piece it holds on
	// the key, so that a lease asked for before that one ends continues
	// it rather than doubling a bucket it has. 0: none.
	PacedAfter int64
	// Span, for a central acquire (TTL 0), asks that a sliding window
	// count the grant over [T, T+Span] of log time (at most the key's
	// MaxLease), in every slot window that span overlaps, as it counts a
	// lease of that life, rather than at the instant T. No lease is made:
	// the client promises to spend the grant within Span of T as its own
	// clock bounds it, and to refuse it if its answer comes later (a
	// central decision answered late: DESIGN.md, "Sliding windows"). The
	// result's TTL is the least span its items answer: a window the span
	// it counted, a leasing token bucket with SpanBuckets its MaxLease; 0
	// if none answers. Token buckets without SpanBuckets, other
	// algorithms, and an acquire with a TTL ignore it. 0: an instant
	// grant, as before the field. A replica that predates it stops on it.
	Span time.Duration
	// SpanBuckets, with a Span, has the token buckets among the items
	// answer it too: the result's TTL is then at most each bucket's
	// MaxLease (Λ), the longest after T that the bound (Machine.acquire)
	// lets a token granted at T be spent, and the client refuses the
	// grant if its answer comes later. A bucket does not count the span;
	// one with no leases (strict, reserve ⌈r·Λ⌉ the whole burst: Λ = 0)
	// leaves the TTL as the other items make it. Without it, token buckets
	// ignore Span, as before the field. A replica that predates it stops on
	// it.
	SpanBuckets bool
}

// Release gives back a lease's unused tokens. Releasing a lease that is
// unknown, expired or already released changes nothing.
type Release struct {
	ClientID   string
	Seq        uint64
	AckedBelow uint64
	LeaseID    uint64
	// Unused holds, per item of the lease in order, the tokens never spent.
	// Empty means none was spent.
	Unused []int64
}

// Charge accounts for tokens already spent, such as a call's usage beyond
// what it reserved: each item's key is debited unconditionally, below empty
// into debt down to its limit's MaxDebt, and what would go further is
// forgiven. Items apply independently (a key at its cap does not stop the
// others), but the command is checked whole first: an invalid item, or a key
// with no limit, applies none. Only token buckets can be charged.
type Charge struct {
	ClientID   string
	Seq        uint64
	AckedBelow uint64
	Items      []ChargeItem
}

// ChargeItem is one key of a Charge.
type ChargeItem struct {
	// Key names the limited thing, 1 to MaxKeyLen bytes.
	Key string
	// Tokens is what to charge, at least 1.
	Tokens int64
	// Limit is used when the key has no limit yet (it may have been
	// forgotten while full). Optional.
	Limit *Limit
}

// Extend keeps a live lease alive longer: its expiry becomes the later of
// what it was and now + min(TTL, its keys' MaxLease). It keeps concurrency
// units held and unused tokens refundable for a long call; it gives no
// tokens, and tokens of a lease must still be spent before its original
// expiry (see Machine.acquire). Extending a lease that is unknown, expired
// or released changes nothing.
type Extend struct {
	ClientID   string
	Seq        uint64
	AckedBelow uint64
	LeaseID    uint64
	// TTL is the life asked for from now, at least 0 (0 changes nothing).
	TTL time.Duration
}

// Restrict takes tokens away from token-bucket keys, as a provider's 429 or
// its rate-limit headers ask: a key can be blocked until a later log time,
// lowered to a level, or both. It never gives a key tokens. Like Charge, the
// command is checked whole and then each item applies on its own.
type Restrict struct {
	ClientID   string
	Seq        uint64
	AckedBelow uint64
	Items      []RestrictItem
}

// RestrictItem is one key of a Restrict.
type RestrictItem struct {
	// Key names the limited thing, 1 to MaxKeyLen bytes.
	Key string
	// Remaining, unless it is NoRemaining, is the most tokens the key may
	// still grant now, at least 0: the bucket is lowered to it.
	Remaining int64
	// BlockFor, if positive, is how long from now the key grants nothing;
	// from then on it refills from empty. Capped at MaxBlock.
	BlockFor time.Duration
	// Limit is used when the key has no limit yet. Optional.
	Limit *Limit
}

// Batch applies several commands at one log time, each with its own result.
// It may not contain another Batch.
type Batch struct {
	Commands []Command
}

func (*SetLimit) commandType() Type     { return TypeSetLimit }
func (*DeleteLimit) commandType() Type  { return TypeDeleteLimit }
func (*DeleteLimits) commandType() Type { return TypeDeleteLimits }
func (*Acquire) commandType() Type      { return TypeAcquire }
func (*Release) commandType() Type      { return TypeRelease }
func (*Batch) commandType() Type        { return TypeBatch }
func (*Charge) commandType() Type       { return TypeCharge }
func (*Extend) commandType() Type       { return TypeExtend }
func (*Restrict) commandType() Type     { return TypeRestrict }

// Field numbers, shared by the encoder and the decoders; see command.proto.
const (
	fTime = 1

	fLimitAlgorithm = 1
	fLimitLimit     = 2
	fLimitPeriod    = 3
	fLimitBurst     = 4
	fLimitSlots     = 5
	fLimitStrict    = 6
	fLimitMaxLease  = 7
	fLimitMaxDebt   = 8
	fLimitBuckets   = 9

	fSetKey   = 2
	fSetLimit = 3

	fDeleteKey = 2

	fDeletePrefix   = 2
	fDeleteAfter    = 3
	fDeleteUnpinned = 4

	fClientID   = 2
	fSeq        = 3
	fAckedBelow = 4

	fAcquireItems = 5
	fAcquireTTL   = 6
	fAcquirePaced = 7
	fAcquireAfter = 8
	fAcquireSpan  = 9
	fAcquireSpanB = 10

	fItemKey   = 1
	fItemCount = 2
	fItemWant  = 3
	fItemLimit = 4

	fReleaseLease  = 5
	fReleaseUnused = 6

	fBatchCommands = 2

	fChargeItems    = 5
	fChargeItemKey  = 1
	fChargeItemToks = 2
	fChargeItemLim  = 3

	fExtendLease = 5
	fExtendTTL   = 6

	fRestrictItems      = 5
	fRestrictItemKey    = 1
	fRestrictItemRemain = 2
	fRestrictItemBlock  = 3
	fRestrictItemLim    = 4
)

// Encode appends the log entry for c, stamped with log time now, to dst.
func Encode(dst []byte, now int64, c Command) []byte {
	dst = append(dst, byte(c.commandType()))
	dst = appendVarint(dst, fTime, uint64(now))
	return appendBody(dst, c)
}

func appendBody(b []byte, c Command) []byte {
	switch c := c.(type) {
	case *SetLimit:
		b = appendString(b, fSetKey, c.Key)
		b = appendLimit(b, fSetLimit, &c.Limit)
	case *DeleteLimit:
		b = appendString(b, fDeleteKey, c.Key)
	case *DeleteLimits:
		b = appendString(b, fDeletePrefix, c.Prefix)
		b = appendString(b, fDeleteAfter, c.StartAfter)
		if c.UnpinnedOnly {
			b = appendVarint(b, fDeleteUnpinned, 1)
		}
	case *Acquire:
		b = appendString(b, fClientID, c.ClientID)
		b = appendVarint(b, fSeq, c.Seq)
		b = appendVarint(b, fAckedBelow, c.AckedBelow)
		for i := range c.Items {
			it := &c.Items[i]
			b = protowire.AppendTag(b, fAcquireItems, protowire.BytesType)
			b = appendMessage(b, func(b []byte) []byte {
				b = appendString(b, fItemKey, it.Key)
				b = appendVarint(b, fItemCount, uint64(it.Count))
				b = appendVarint(b, fItemWant, uint64(it.Want))
				if it.Limit != nil {
					b = appendLimit(b, fItemLimit, it.Limit)
				}
				return b
			})
		}
		b = appendVarint(b, fAcquireTTL, uint64(c.TTL))
		if c.Paced {
			b = appendVarint(b, fAcquirePaced, 1)
		}
		b = appendVarint(b, fAcquireAfter, uint64(c.PacedAfter))
		b = appendVarint(b, fAcquireSpan, uint64(c.Span))
		if c.SpanBuckets {
			b = appendVarint(b, fAcquireSpanB, 1)
		}
	case *Release:
		b = appendString(b, fClientID, c.ClientID)
		b = appendVarint(b, fSeq, c.Seq)
		b = appendVarint(b, fAckedBelow, c.AckedBelow)
		b = appendVarint(b, fReleaseLease, c.LeaseID)
		if len(c.Unused) > 0 {
			b = protowire.AppendTag(b, fReleaseUnused, protowire.BytesType)
			b = appendMessage(b, func(b []byte) []byte {
				for _, u := range c.Unused {
					b = protowire.AppendVarint(b, uint64(u))
				}
				return b
			})
		}
	case *Charge:
		b = appendString(b, fClientID, c.ClientID)
		b = appendVarint(b, fSeq, c.Seq)
		b = appendVarint(b, fAckedBelow, c.AckedBelow)
		for i := range c.Items {
			it := &c.Items[i]
			b = protowire.AppendTag(b, fChargeItems, protowire.BytesType)
			b = appendMessage(b, func(b []byte) []byte {
				b = appendString(b, fChargeItemKey, it.Key)
				b = appendVarint(b, fChargeItemToks, uint64(it.Tokens))
				if it.Limit != nil {
					b = appendLimit(b, fChargeItemLim, it.Limit)
				}
				return b
			})
		}
	case *Extend:
		b = appendString(b, fClientID, c.ClientID)
		b = appendVarint(b, fSeq, c.Seq)
		b = appendVarint(b, fAckedBelow, c.AckedBelow)
		b = appendVarint(b, fExtendLease, c.LeaseID)
		b = appendVarint(b, fExtendTTL, uint64(c.TTL))
	case *Restrict:
		b = appendString(b, fClientID, c.ClientID)
		b = appendVarint(b, fSeq, c.Seq)
		b = appendVarint(b, fAckedBelow, c.AckedBelow)
		for i := range c.Items {
			it := &c.Items[i]
			b = protowire.AppendTag(b, fRestrictItems, protowire.BytesType)
			b = appendMessage(b, func(b []byte) []byte {
				b = appendString(b, fRestrictItemKey, it.Key)
				if it.Remaining != NoRemaining {
					// Present even when 0: absent means no lowering.
					b = protowire.AppendTag(b, fRestrictItemRemain, protowire.VarintType)
					b = protowire.AppendVarint(b, uint64(it.Remaining))
				}
				b = appendVarint(b, fRestrictItemBlock, uint64(it.BlockFor))
				if it.Limit != nil {
					b = appendLimit(b, fRestrictItemLim, it.Limit)
				}
				return b
			})
		}
	case *Batch:
		for _, sub := range c.Commands {
			b = protowire.AppendTag(b, fBatchCommands, protowire.BytesType)
			b = appendMessage(b, func(b []byte) []byte {
				b = append(b, byte(sub.commandType()))
				return appendBody(b, sub)
			})
		}
	default:
		panic(fmt.Sprintf("fsm: Encode of unknown command %T", c))
	}
	return b
}

func appendLimit(b []byte, field protowire.Number, l *Limit) []byte {
	b = protowire.AppendTag(b, field, protowire.BytesType)
	return appendMessage(b, func(b []byte) []byte {
		b = appendVarint(b, fLimitAlgorithm, uint64(l.Algorithm))
		b = appendVarint(b, fLimitLimit, uint64(l.Limit))
		b = appendVarint(b, fLimitPeriod, uint64(l.Period))
		b = appendVarint(b, fLimitBurst, uint64(l.Burst))
		b = appendVarint(b, fLimitSlots, uint64(int64(l.Slots)))
		if l.Strict {
			b = appendVarint(b, fLimitStrict, 1)
		}
		b = appendVarint(b, fLimitMaxLease, uint64(l.MaxLease))
		b = appendVarint(b, fLimitMaxDebt, uint64(l.MaxDebt))
		return appendVarint(b, fLimitBuckets, uint64(int64(l.Buckets)))
	})
}

// appendMessage appends a length-delimited body written by fn. The length is
// written after the body, then the body is moved up, so no scratch buffer is
// needed.
func appendMessage(b []byte, fn func([]byte) []byte) []byte {
	start := len(b)
	b = fn(b)
	n := len(b) - start
	size := protowire.SizeVarint(uint64(n))
	b = append(b, make([]byte, size)...)
	copy(b[start+size:], b[start:start+n])
	protowire.AppendVarint(b[start:start], uint64(n))
	return b
}

// appendVarint appends a varint field, skipping zero values as proto3 does.
func appendVarint(b []byte, field protowire.Number, v uint64) []byte {
	if v == 0 {
		return b
	}
	b = protowire.AppendTag(b, field, protowire.VarintType)
	return protowire.AppendVarint(b, v)
}

func appendString(b []byte, field protowire.Number, s string) []byte {
	if s == "" {
		return b
	}
	b = protowire.AppendTag(b, field, protowire.BytesType)
	return protowire.AppendString(b, s)
}

// ErrCorrupt is wrapped by every decoding error: the bytes are not a command or
// snapshot this version can read.
var ErrCorrupt = errors.New("corrupt")

// Decode parses a log entry. It allocates; Machine.Apply uses a reusing decoder.
func Decode(entry []byte) (now int64, c Command, err error) {
	var d decoder
	if err := d.decode(entry, false); err != nil {
		return 0, nil, err
	}
	c, err = d.command()
	if err != nil {
		return 0, nil, err
	}
	return d.now, c, nil
}
