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
)

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
		l.Burst, l.Strict = 0, false
	case Concurrency:
		l.Period, l.Burst, l.Slots, l.Strict = 0, 0, 0, false
	}
	if l.MaxLease == 0 {
		l.MaxLease = DefaultMaxLease
	}
	return l
}

// Command is one of *SetLimit, *DeleteLimit, *Acquire, *Release or *Batch.
type Command interface {
	commandType() Type
}

// SetLimit defines, or redefines, the limit of a key. A key with a limit set
// this way keeps it until DeleteLimit, however long it is idle.
type SetLimit struct {
	Key   string
	Limit Limit
}

// DeleteLimit forgets a key: its definition and its state.
type DeleteLimit struct {
	Key string
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

// Batch applies several commands at one log time, each with its own result.
// It may not contain another Batch.
type Batch struct {
	Commands []Command
}

func (*SetLimit) commandType() Type    { return TypeSetLimit }
func (*DeleteLimit) commandType() Type { return TypeDeleteLimit }
func (*Acquire) commandType() Type     { return TypeAcquire }
func (*Release) commandType() Type     { return TypeRelease }
func (*Batch) commandType() Type       { return TypeBatch }

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

	fSetKey   = 2
	fSetLimit = 3

	fDeleteKey = 2

	fClientID   = 2
	fSeq        = 3
	fAckedBelow = 4

	fAcquireItems = 5
	fAcquireTTL   = 6

	fItemKey   = 1
	fItemCount = 2
	fItemWant  = 3
	fItemLimit = 4

	fReleaseLease  = 5
	fReleaseUnused = 6

	fBatchCommands = 2
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
		return appendVarint(b, fLimitMaxLease, uint64(l.MaxLease))
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
