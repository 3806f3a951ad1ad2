package fsm

import (
	"bytes"
	"math"
	"time"

	"github.com/leasehold/leasehold/limiter"
)

// The commands of AI budgets: Charge (a settle above its reservation, into
// debt), Restrict (a provider's 429 or remaining header) and Extend (a long
// call keeps its lease). They apply to token buckets (Extend: to any lease);
// see DESIGN.md, "Debt, blocks and extensions".

// resolveBuckets checks the items of a Charge or Restrict and finds their
// keys, creating those that are missing from their inline limits, all before
// changing anything else: an invalid item, or a key without a limit, applies
// no item. check validates one item's numbers. Every key must be a token
// bucket. It fills out, one per item, and reports ok; if not, the Result
// says why.
func (m *Machine) resolveBuckets(d *decoder, what string, check func(*rawItem) (Result, bool), out []resolved) (Result, bool) {
	switch {
	case len(d.items) == 0:
		return invalid(StatusInvalidRequest, "%s names no key", what), false
	case len(d.items) > MaxItems:
		return invalid(StatusInvalidRequest, "%s names %d keys; the most is %d", what, len(d.items), MaxItems), false
	}
	for i := range d.items {
		it := &d.items[i]
		if r, ok := checkKey(it.key); !ok {
			return r, false
		}
		if r, ok := check(it); !ok {
			return r, false
		}
		for j := range i {
			if bytes.Equal(d.items[j].key, it.key) {
				return invalid(StatusInvalidRequest, "key %q is named twice", it.key), false
			}
		}
	}
	for i := range d.items {
		it := &d.items[i]
		var c *compiled
		if it.hasLimit {
			var err error
			if c, err = m.compileInline(&it.lim); err != nil {
				return invalid(StatusInvalidLimit, "key %q: %v", it.key, err), false
			}
		}
		switch j := m.keys.findBytes(m.entries, it.key); {
		case j >= 0:
			out[i] = resolved{index: j, limit: m.entries[j].limit()}
			out[i].lim = m.limits.get(out[i].limit)
		case it.hasLimit:
			m.inline[i] = *c
			out[i] = resolved{lim: &m.inline[i], fresh: true}
		default:
			return Result{Status: StatusNoLimit, Message: "key " + string(it.key) + " has no limit; set one or send one with the " + what,
				NoLimitKey: string(it.key)}, false
		}
		if a := out[i].lim.def.Algorithm; a != TokenBucket {
			return invalid(StatusInvalidRequest, "key %q is a %v limit; a %s applies to token buckets only", it.key, a, what), false
		}
	}
	for i := range out {
		if out[i].fresh {
			j := m.addKey(string(d.items[i].key), out[i].lim, false)
			out[i].index, out[i].limit = j, m.entries[j].limit()
		}
	}
	for i := range out {
		// Adding keys may have grown the limit table: point into it afresh.
		out[i].lim = m.limits.get(out[i].limit)
	}
	return Result{}, true
}

// charge debits each item's tokens from its key whatever the key holds, down
// to MaxDebt below empty (below a strict bucket's reserve), and forgives the
// rest. See Machine.acquire for the bound this keeps.
func (m *Machine) charge(d *decoder) Result {
	var buf [MaxItems]resolved
	items := buf[:min(len(d.items), MaxItems)]
	if r, ok := m.resolveBuckets(d, "charge", checkCharge, items); !ok {
		return r
	}
	res := Result{Status: StatusOK, Items: make([]ItemResult, len(items))}
	for i := range items {
		e, c, n := &m.entries[items[i].index], items[i].lim, d.items[i].count
		st := limiter.BucketState{TAT: e.state}
		debt := c.chargeDebt()
		if m.noDebtCap {
			debt = 1 << 62 // the known-bad variant: no cap
		}
		charged := c.bucket.Charge(&st, m.now, n, debt)
		e.state = st.TAT
		res.Items[i] = ItemResult{Granted: charged, Remaining: c.bucket.Level(st, m.now) - c.reserve}
		res.RetryAfter = max(res.RetryAfter, m.untilGrant(c, st))
	}
	return res
}

func checkCharge(it *rawItem) (Result, bool) {
	if it.count <= 0 {
		return invalid(StatusInvalidCount, "key %q: tokens %d must be positive", it.key, it.count), false
	}
	return Result{}, true
}

// restrict blocks each item's key for its BlockFor, lowers it to its
// Remaining, or both; it never gives a key tokens. A blocked key is empty,
// for grants, when the block ends, and refills from there.
//
// What a Restrict sets is also the key's floor: a later refund (Release)
// never moves the key's TAT below it. A refund is of tokens the provider
// never saw, so it does not change what the provider said: had it come
// before the Restrict, the Restrict would have set the same state. Without
// the floor, the 429'd call's own settle (nothing used, all refunded) would
// reopen the budget it had just blocked.
func (m *Machine) restrict(d *decoder) Result {
	var buf [MaxItems]resolved
	items := buf[:min(len(d.items), MaxItems)]
	if r, ok := m.resolveBuckets(d, "restrict", checkRestrict, items); !ok {
		return r
	}
	res := Result{Status: StatusOK, Items: make([]ItemResult, len(items))}
	for i := range items {
		e, c, it := &m.entries[items[i].index], items[i].lim, &d.items[i]
		st := limiter.BucketState{TAT: e.state}
		before := c.bucket.Level(st, m.now)
		// The TAT this restriction asks for, whatever the key's state: its
		// floor from now on.
		floor := limiter.BucketState{TAT: math.MinInt64}
		if it.block > 0 {
			// Empty for grants at the end: a strict bucket keeps its reserve.
			c.bucket.Lower(&floor, m.now+min(it.block, int64(MaxBlock)), c.reserve)
		}
		if it.remaining != NoRemaining {
			c.bucket.Lower(&floor, m.now, min(it.remaining, c.def.Burst)+c.reserve)
		}
		if floor.TAT > m.now {
			if f, ok := m.floors[e.key]; !ok || floor.TAT > f {
				m.floors[e.key] = floor.TAT
			}
		}
		st.TAT = max(st.TAT, floor.TAT)
		e.state = st.TAT
		after := c.bucket.Level(st, m.now)
		res.Items[i] = ItemResult{Granted: before - after, Remaining: after - c.reserve}
		res.RetryAfter = max(res.RetryAfter, m.untilGrant(c, st))
	}
	return res
}

func checkRestrict(it *rawItem) (Result, bool) {
	switch {
	case it.remaining < 0 && it.remaining != NoRemaining:
		return invalid(StatusInvalidCount, "key %q: remaining %d must be at least 0", it.key, it.remaining), false
	case it.block < 0:
		return invalid(StatusInvalidTTL, "key %q: block %v is negative", it.key, time.Duration(it.block)), false
	case it.block == 0 && it.remaining == NoRemaining:
		return invalid(StatusInvalidRequest, "key %q: the item restricts nothing; give a remaining, a block or both", it.key), false
	}
	return Result{}, true
}

// untilGrant returns how long a bucket of limit c in state st, untouched,
// takes to grant a token: 0 if it can now, limiter.Never if it never can.
func (m *Machine) untilGrant(c *compiled, st limiter.BucketState) time.Duration {
	return c.bucket.TakeLeaving(&st, m.now, 1, c.reserve).RetryAfter
}

// extend moves a live lease's expiry to now + min(TTL, the MaxLease of each
// of its keys) if that is later. A key deleted or redefined since the grant
// caps it at now: the lease is no longer what the key's limit counts, so it
// is not kept alive for it.
func (m *Machine) extend(d *decoder) Result {
	if d.ttl < 0 {
		return invalid(StatusInvalidTTL, "lease TTL %v is negative", time.Duration(d.ttl))
	}
	l := m.leases.get(d.leaseID)
	if l == nil {
		return Result{Status: StatusLeaseGone}
	}
	if l.client != string(d.clientID) {
		return invalid(StatusInvalidRequest, "lease %d belongs to another client", d.leaseID)
	}
	if m.now >= l.expires {
		m.endLease(l)
		return Result{Status: StatusLeaseGone}
	}
	life := min(d.ttl, int64(MaxLeaseTTL))
	for i := range l.items {
		it := &l.items[i]
		if j := m.entryOf(it); j < 0 || m.entries[j].limit() != it.limit {
			life = 0
			break
		}
		life = min(life, m.limits.get(it.limit).maxLease)
	}
	if until := m.now + life; until > l.expires {
		if l.gen != m.gen {
			l = m.ownLease(l) // a Capture may hold it
		}
		l.expires = until
		m.expiries.push(expiry{at: until, id: l.id})
	}
	return Result{Status: StatusOK, LeaseID: l.id, TTL: time.Duration(l.expires - m.now)}
}
