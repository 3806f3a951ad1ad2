package transport

import (
	"errors"
	"fmt"
	"strconv"
	"time"
	"unicode/utf8"

	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

// The server's limits on request fields. Clients may check against them
// before sending; the server checks every request with the Validate functions
// below before it reaches the Service.
const (
	// MaxKeyLen is the longest key, in bytes. Keys are 1 to MaxKeyLen bytes
	// of valid UTF-8.
	MaxKeyLen = 512
	// MaxItems is the most keys one Acquire may name, and so the most
	// unused counts one Release may carry (one per item of its lease).
	MaxItems = 8
	// MaxClientIDLen is the longest client_id, in bytes. A client_id is 1 to
	// MaxClientIDLen bytes.
	MaxClientIDLen = 64
	// MaxLeaseTTL is the longest lease life a request may ask for
	// (AcquireRequest.ttl_ns) and the largest Limit.max_lease_ns.
	MaxLeaseTTL = time.Minute
	// MaxSlots is the most sub-windows a sliding window may have.
	MaxSlots = 64
	// MaxBlock is the longest RestrictItem.blocked_for_ns. A provider's
	// longest window is a day; a longer wait read from one of its headers
	// is a misreading, and would block a budget until an operator acts.
	MaxBlock = 24 * time.Hour

	// MaxRequestBytes is the largest request message a server takes, in
	// bytes; a larger one is refused with RESOURCE_EXHAUSTED before it is
	// read (see [ServerOptions]). The largest valid request, an Acquire of
	// MaxItems items with keys of MaxKeyLen bytes and an inline limit each,
	// encodes to 4,759 bytes (TestMaxRequestBytes); the rest is headroom
	// for fields a newer client may add. gRPC's own default, 4 MiB, would
	// let one request carry nearly a thousand times that into the Raft log.
	MaxRequestBytes = 16 << 10
)

// Each Validate function checks every field of a request against the rules on
// its proto message and returns nil or the first problem found, in field
// order, as an *InvalidError naming the field by its proto path. They read the
// request only, and are safe for concurrent use on requests nobody modifies.
//
// Some rules need the cluster's state and are checked when the request
// applies; the Service reports them as *InvalidError too (a concurrency key
// with ttl_ns 0, an unused count above what the lease granted, a lease of
// another client, a Charge or Restrict of a key that is not a token bucket,
// a seq reused for a different request).

// ValidateAcquire checks an AcquireRequest: client_id 1..MaxClientIDLen bytes;
// seq >= 1; acked_below <= seq; ttl_ns in [0, MaxLeaseTTL]; span_ns in
// [0, MaxLeaseTTL], and 0 with a ttl_ns; 1..MaxItems items
// with distinct keys, each with a key of 1..MaxKeyLen bytes of valid UTF-8,
// count >= 1, want 0 or >= count, and a valid limit if it has one.
func ValidateAcquire(req *pb.AcquireRequest) error {
	if err := validateSession(req.GetClientId(), req.GetSeq(), req.GetAckedBelow()); err != nil {
		return err
	}
	if ttl := req.GetTtlNs(); ttl < 0 || ttl > int64(MaxLeaseTTL) {
		return invalidf("ttl_ns", "lease TTL is %v; it must be in [0, %v] (0 asks for a central decision, no lease)",
			time.Duration(ttl), MaxLeaseTTL)
	}
	if s := req.GetSpanNs(); s < 0 || s > int64(MaxLeaseTTL) || s > 0 && req.GetTtlNs() > 0 {
		return invalidf("span_ns", "span is %v; it must be in [0, %v], and 0 with a lease TTL (a span is for central decisions)",
			time.Duration(s), MaxLeaseTTL)
	}
	if a := req.GetPacedAfterNs(); a < 0 {
		return invalidf("paced_after_ns", "paced_after_ns is %d; it must not be negative", a)
	}
	items := req.GetItems()
	if err := validateItems(items); err != nil {
		return err
	}
	for i, it := range items {
		// Fields are named relative to the item and given their items[i]
		// prefix only on error, so a valid request builds no names.
		if c := it.GetCount(); c < 1 {
			return inItem(i, invalidf("count", "count is %d; it must be at least 1", c))
		}
		if w := it.GetWant(); w != 0 && w < it.GetCount() {
			return inItem(i, invalidf("want", "want %d is below count %d; send 0 (meaning count) or at least count",
				w, it.GetCount()))
		}
		if it.GetLimit() != nil {
			if err := ValidateLimit("limit", it.GetLimit()); err != nil {
				return inItem(i, err)
			}
		}
	}
	return nil
}

// inItem puts an error about a field of items[i] under that item's path.
func inItem(i int, err error) error {
	var ie *InvalidError
	if errors.As(err, &ie) {
		ie.Field = "items[" + strconv.Itoa(i) + "]." + ie.Field
	}
	return err
}

// ValidateRelease checks a ReleaseRequest: client_id 1..MaxClientIDLen bytes;
// seq >= 1; acked_below <= seq; lease_id >= 1; at most MaxItems unused
// counts (one per item of the lease), each >= 0.
func ValidateRelease(req *pb.ReleaseRequest) error {
	if err := validateSession(req.GetClientId(), req.GetSeq(), req.GetAckedBelow()); err != nil {
		return err
	}
	if req.GetLeaseId() == 0 {
		return invalidf("lease_id", "lease_id is 0; send the lease_id of an AcquireResponse")
	}
	if n := len(req.GetUnused()); n > MaxItems {
		return invalidf("unused", "%d unused counts; a lease has at most %d items, one count each", n, MaxItems)
	}
	for i, u := range req.GetUnused() {
		if u < 0 {
			return invalidf(fmt.Sprintf("unused[%d]", i), "unused is %d; it must be at least 0", u)
		}
	}
	return nil
}

// ValidateCharge checks a ChargeRequest: client_id 1..MaxClientIDLen bytes;
// seq >= 1; acked_below <= seq; 1..MaxItems items with distinct keys, each
// with a key of 1..MaxKeyLen bytes of valid UTF-8, tokens >= 1, and a valid
// limit if it has one.
func ValidateCharge(req *pb.ChargeRequest) error {
	if err := validateSession(req.GetClientId(), req.GetSeq(), req.GetAckedBelow()); err != nil {
		return err
	}
	items := req.GetItems()
	if err := validateItems(items); err != nil {
		return err
	}
	for i, it := range items {
		if n := it.GetTokens(); n < 1 {
			return inItem(i, invalidf("tokens", "tokens is %d; a charge is of at least 1", n))
		}
		if it.GetLimit() != nil {
			if err := ValidateLimit("limit", it.GetLimit()); err != nil {
				return inItem(i, err)
			}
		}
	}
	return nil
}

// ValidateExtend checks an ExtendRequest: client_id 1..MaxClientIDLen bytes;
// seq >= 1; acked_below <= seq; lease_id >= 1; ttl_ns in [1ns, MaxLeaseTTL].
func ValidateExtend(req *pb.ExtendRequest) error {
	if err := validateSession(req.GetClientId(), req.GetSeq(), req.GetAckedBelow()); err != nil {
		return err
	}
	if req.GetLeaseId() == 0 {
		return invalidf("lease_id", "lease_id is 0; send the lease_id of an AcquireResponse")
	}
	if ttl := req.GetTtlNs(); ttl < 1 || ttl > int64(MaxLeaseTTL) {
		return invalidf("ttl_ns", "TTL is %v; it must be in [1ns, %v]", time.Duration(ttl), MaxLeaseTTL)
	}
	return nil
}

// ValidateRestrict checks a RestrictRequest: client_id 1..MaxClientIDLen
// bytes; seq >= 1; acked_below <= seq; 1..MaxItems items with distinct keys,
// each with a key of 1..MaxKeyLen bytes of valid UTF-8, remaining >= 0 if
// set, blocked_for_ns in [0, MaxBlock], at least one of the two (a
// remaining, or blocked_for_ns > 0), and a valid limit if it has one.
func ValidateRestrict(req *pb.RestrictRequest) error {
	if err := validateSession(req.GetClientId(), req.GetSeq(), req.GetAckedBelow()); err != nil {
		return err
	}
	items := req.GetItems()
	if err := validateItems(items); err != nil {
		return err
	}
	for i, it := range items {
		if it.Remaining != nil && it.GetRemaining() < 0 {
			return inItem(i, invalidf("remaining", "remaining is %d; it must be at least 0 (leave it out to lower nothing)",
				it.GetRemaining()))
		}
		if b := it.GetBlockedForNs(); b < 0 || b > int64(MaxBlock) {
			return inItem(i, invalidf("blocked_for_ns", "block is %v; it must be in [0, %v]", time.Duration(b), MaxBlock))
		}
		if it.Remaining == nil && it.GetBlockedForNs() == 0 {
			return inItem(i, invalidf("blocked_for_ns", "the item restricts nothing; send remaining, blocked_for_ns or both"))
		}
		if it.GetLimit() != nil {
			if err := ValidateLimit("limit", it.GetLimit()); err != nil {
				return inItem(i, err)
			}
		}
	}
	return nil
}

// validateItemCount checks the length of a request's items.
// validateItems checks a request's items as every multi-key request must
// have them: 1..MaxItems of them, each key of 1..MaxKeyLen bytes of valid
// UTF-8, no key named twice.
func validateItems[T interface{ GetKey() string }](items []T) error {
	if err := validateItemCount(len(items)); err != nil {
		return err
	}
	for i, it := range items {
		if err := validateKey("key", it.GetKey()); err != nil {
			return inItem(i, err)
		}
		for j := range i {
			if items[j].GetKey() == it.GetKey() {
				return inItem(i, invalidf("key", "key %q is also items[%d].key; name each key once", it.GetKey(), j))
			}
		}
	}
	return nil
}

func validateItemCount(n int) error {
	switch {
	case n == 0:
		return invalidf("items", "no items; send 1 to %d", MaxItems)
	case n > MaxItems:
		return invalidf("items", "%d items; the most is %d", n, MaxItems)
	}
	return nil
}

// ValidateSetLimit checks a SetLimitRequest: a key of 1..MaxKeyLen bytes of
// valid UTF-8 and a limit, valid by [ValidateLimit].
func ValidateSetLimit(req *pb.SetLimitRequest) error {
	if err := validateKey("key", req.GetKey()); err != nil {
		return err
	}
	if req.GetLimit() == nil {
		return invalidf("limit", "no limit; SetLimit needs one")
	}
	return ValidateLimit("limit", req.GetLimit())
}

// ValidateGetLimit checks a GetLimitRequest: a key of 1..MaxKeyLen bytes of
// valid UTF-8.
func ValidateGetLimit(req *pb.GetLimitRequest) error {
	return validateKey("key", req.GetKey())
}

// ValidateDeleteLimit checks a DeleteLimitRequest: a key of 1..MaxKeyLen
// bytes of valid UTF-8.
func ValidateDeleteLimit(req *pb.DeleteLimitRequest) error {
	return validateKey("key", req.GetKey())
}

// ValidateLimit checks a limit definition; field is its path in the request
// ("limit", "items[0].limit"), used to name the field at fault. The algorithm
// is one of the three; limit > 0; period_ns > 0 unless the algorithm is
// CONCURRENCY, which ignores it; burst >= 0; slots in [0, MaxSlots], and for
// a SLIDING_WINDOW at most period_ns (slots 0 means 10, so a window needs a
// period of at least 10ns then: every slot at least 1ns wide);
// max_lease_ns in [0, MaxLeaseTTL]; max_debt >= 0. A nil limit is an error:
// callers check for optional limits first.
//
// Some limits pass and are refused when they apply, as they depend on
// arithmetic this package leaves to the state machine: a burst (plus
// max_debt) whose refill takes longer than about 146 years.
func ValidateLimit(field string, l *pb.Limit) error {
	if l == nil {
		return invalidf(field, "no limit")
	}
	alg := l.GetAlgorithm()
	switch alg {
	case pb.Algorithm_TOKEN_BUCKET, pb.Algorithm_SLIDING_WINDOW, pb.Algorithm_CONCURRENCY:
	default:
		return invalidf(field+".algorithm", "unknown algorithm %d; want TOKEN_BUCKET, SLIDING_WINDOW or CONCURRENCY",
			int32(alg))
	}
	if l.GetLimit() <= 0 {
		return invalidf(field+".limit", "limit is %d; it must be positive (tokens per period, or units held at once)",
			l.GetLimit())
	}
	if alg != pb.Algorithm_CONCURRENCY && l.GetPeriodNs() <= 0 {
		return invalidf(field+".period_ns", "period is %v; a %v limit needs a positive period",
			time.Duration(l.GetPeriodNs()), alg)
	}
	if l.GetBurst() < 0 {
		return invalidf(field+".burst", "burst is %d; it must be at least 0 (0 means limit)", l.GetBurst())
	}
	if s := l.GetSlots(); s < 0 || s > MaxSlots {
		return invalidf(field+".slots", "slots is %d; it must be in [0, %d] (0 means 10)", s, MaxSlots)
	}
	if alg == pb.Algorithm_SLIDING_WINDOW {
		s := int64(l.GetSlots())
		if s == 0 {
			s = defaultSlots
		}
		if s > l.GetPeriodNs() {
			return invalidf(field+".slots", "%d slots in a window of %v; each slot must be at least 1ns, so at most %d",
				s, time.Duration(l.GetPeriodNs()), l.GetPeriodNs())
		}
	}
	if m := l.GetMaxLeaseNs(); m < 0 || m > int64(MaxLeaseTTL) {
		return invalidf(field+".max_lease_ns", "max lease is %v; it must be in [0, %v] (0 means 2s)",
			time.Duration(m), MaxLeaseTTL)
	}
	if d := l.GetMaxDebt(); d < 0 {
		return invalidf(field+".max_debt", "max debt is %d; it must be at least 0 (0 means no debt)", d)
	}
	return nil
}

// defaultSlots is the slots of a sliding window whose limit says 0.
const defaultSlots = 10

// validateKey checks a key's length and encoding; field names it. Keys are
// proto3 strings, which must be UTF-8: a server cannot decode a request that
// carries another key, and a client cannot encode one.
func validateKey(field, key string) error {
	switch {
	case key == "":
		return invalidf(field, "key is empty; it must be 1 to %d bytes", MaxKeyLen)
	case len(key) > MaxKeyLen:
		return invalidf(field, "key is %d bytes; the most is %d", len(key), MaxKeyLen)
	case !utf8.ValidString(key):
		return invalidf(field, "key %q is not valid UTF-8; keys are UTF-8 strings", key)
	}
	return nil
}

// validateSession checks the fields that make a mutating request idempotent.
// acked_below above seq would claim the reply of the request being sent and
// let the cluster forget it before the client has it.
func validateSession(clientID []byte, seq, ackedBelow uint64) error {
	switch {
	case len(clientID) == 0:
		return invalidf("client_id", "client_id is empty; send 1 to %d bytes, random per client process", MaxClientIDLen)
	case len(clientID) > MaxClientIDLen:
		return invalidf("client_id", "client_id is %d bytes; the most is %d", len(clientID), MaxClientIDLen)
	case seq == 0:
		return invalidf("seq", "seq is 0; sequence numbers start at 1")
	case ackedBelow > seq:
		return invalidf("acked_below", "acked_below %d is above seq %d; it may be at most seq", ackedBelow, seq)
	}
	return nil
}
