package fsm

import (
	"bytes"
	"cmp"
	"math"
	"math/bits"
	"slices"
	"time"

	"github.com/leasehold/leasehold/limiter"
)

// resolved is an acquire item with its key found (or created) and validated.
type resolved struct {
	index int    // in entries
	limit uint32 // the key's limit id
	lim   *compiled
	count int64
	want  int64
	fresh bool // the key is new: lim points at Machine.inline until it is added
	// hold is the requesting client's count of live leases on the key; nil
	// if it holds none. Looked up once, before anything is granted.
	hold *int32
	// lessees is the key's lessees, the requesting client counted once
	// whether or not it holds a lease: n of the fair share.
	lessees int32
}

// compileInline is compile for a limit sent with an acquire. It remembers the
// last definition it compiled, since clients send the same one over and over;
// compile is a pure function of the definition, so the memo changes no
// decision and is not part of the replicated state.
func (m *Machine) compileInline(l *Limit) (*compiled, error) {
	if !m.memoOK || *l != m.memoDef {
		c, err := compile(*l)
		if err != nil {
			return nil, err
		}
		m.memoDef, m.memo, m.memoOK = *l, c, true
	}
	return &m.memo, nil
}

// acquire decides an Acquire inside Apply and debits what it grants before
// returning: a grant is never decided on a read of state followed by a
// separate deduction (invariant 3).
//
// The over-admission bound (invariant 7). A lease's tokens may be spent at any
// instant of its life, which is at most Λ = the key's MaxLease. Tokens spent in
// an interval [a, a+Δ] were therefore granted in [a-Λ, a+Δ], and a token bucket
// of burst B and rate r grants at most B + r·(Δ+Λ) in an interval of length
// Δ+Λ. So over all clients, a token bucket admits at most
//
//	B + r·(Δ + Λ)   in any interval of length Δ.
//
// A Strict bucket holds back ⌈r·Λ⌉ tokens from every grant, lease or not, so it
// behaves as a bucket of burst B - ⌈r·Λ⌉ and admits at most B + r·Δ; when
// ⌈r·Λ⌉ >= B it grants no leases (Λ = 0) and holds nothing back. A sliding
// window counts a lease in every slot window its life overlaps
// (limiter.SlidingWindow.TakeSpan), so it admits at most its limit in any
// window, leases included; a paced lease's pieces each count in the slot
// windows of their bucket alone and are spent only within it (grantPieces),
// which keeps the same bound. A central grant counts at its instant, or over
// its Span when the acquire asks for one; its client spends it within that
// span or not at all (a central grant spent later, an answer that came
// late, is outside the bound: Acquire.Span). A token bucket's central grant
// is a lease spent when its answer arrives: the argument above covers it
// only if that is at most Λ after its log time T, which the client learns
// from the result's TTL (Acquire.SpanBuckets) and keeps by refusing a later
// answer. Spent δ > Λ after T, it is outside the bound by up to
// min(n, r·(δ − Λ)): tokens spent in [a, a+Δ] with a ≤ T+δ were then
// granted in [T, a+Δ], at most B + r·(Δ + Λ) + r·(a − Λ − T). A strict
// bucket with no leases has Λ = 0: each central grant, spent a round trip δ
// after T, may be outside B + r·Δ by up to r·δ (DESIGN.md, "A token
// bucket's central grant spent late"). Refunds (Release) return only tokens the client
// never spent. A concurrency limit holds a lease's units until it is released
// or expires.
//
// The bound with debt. A token bucket's tokens are charged to it in two ways:
// spent from a grant (a central one when granted; a lease's before the
// lease's original expiry, see below), or debited by a Charge, at the log
// time of the Charge, for tokens already used beyond a reservation (charge).
// A Charge takes the bucket below empty but never more than D = MaxDebt
// tokens below (below a strict bucket's reserve); what would go further is
// forgiven, reported, and not charged. Every token charged either way moves
// the bucket's TAT forward by at least Period/Rate, a grant leaves the TAT at
// most B·Period/Rate ahead of its log time and a Charge at most
// (B+D)·Period/Rate, and nothing else moves it back but a refund of tokens
// never spent. So over all clients, the tokens charged to a token bucket
// stay within
//
//	B + D + r·(Δ + Λ)   in any interval of length Δ,
//
// and B + D + r·Δ for a Strict one: its grants and its charges both act on
// a bucket of burst B - ⌈r·Λ⌉ that may owe D. (Were a Charge allowed down to
// D below the real empty, it could take the strict reserve too, and the
// strict bound would grow by ⌈r·Λ⌉.) With D = 0 the bound is the one above. A
// Restrict only takes tokens away and an Extend grants none: neither changes
// the bound. Forgiven tokens are the price of the cap: the provider may have
// served them, and a caller that needs them counted sets a larger MaxDebt.
//
// Extend and Λ. An Extend keeps a lease alive past its granted TTL: its
// concurrency units stay held, and its unused tokens stay refundable, until
// the later expiry. It does not lengthen the time its tokens may be spent:
// the holder spends a lease's tokens, that is, admits on them a call that
// is then sent, only strictly before the lease's original expiry as the
// lease invariant measures it (on the holder's clock, from when it sent the
// Acquire, at TTL·(1−ρ)/(1+ρ)), never in an extension. A reservation lease
// is therefore not a spending pool: its tokens are spent when its call is
// admitted, and the extension only carries the call to its settlement (a
// Release of what the call did not use, a Charge of what it used beyond).
// Under that rule every token spent from a lease was granted at most Λ
// before, and Λ stays the key's MaxLease. A token refunded after the
// original expiry was, by the same rule, never spent.
//
// Items are all or nothing on their Counts. Beyond its Count, an item gets up
// to Want as a fair share (see grantOne), so one client cannot drain a key the
// others are also using. A lease whose share fell short of its Want carries a
// RetryAfter: how long its client should leave the key alone before its next
// share is there.
func (m *Machine) acquire(d *decoder, s *session) Result {
	switch {
	case len(d.items) == 0:
		return invalid(StatusInvalidRequest, "acquire names no key")
	case len(d.items) > MaxItems:
		return invalid(StatusInvalidRequest, "acquire names %d keys; the most is %d", len(d.items), MaxItems)
	case d.ttl < 0:
		return invalid(StatusInvalidTTL, "lease TTL %v is negative", time.Duration(d.ttl))
	case d.span < 0:
		return invalid(StatusInvalidTTL, "span %v is negative", time.Duration(d.span))
	}
	for i := range d.items {
		it := &d.items[i]
		if r, ok := checkKey(it.key); !ok {
			return r
		}
		if it.count <= 0 {
			return invalid(StatusInvalidCount, "key %q: count %d must be positive", it.key, it.count)
		}
		if it.want == 0 {
			it.want = it.count
		}
		if it.want < it.count {
			return invalid(StatusInvalidCount, "key %q: want %d is below count %d", it.key, it.want, it.count)
		}
		for j := range i {
			if bytes.Equal(d.items[j].key, it.key) {
				return invalid(StatusInvalidRequest, "key %q is named twice", it.key)
			}
		}
	}

	// Find every key before changing anything.
	var buf [MaxItems]resolved
	items := buf[:len(d.items)]
	ttl := min(d.ttl, int64(MaxLeaseTTL))
	// span: a central acquire's span over which its windows count it and
	// within which it may be spent (Acquire.Span), capped like a lease by
	// every window's MaxLease, and with SpanBuckets every leasing token
	// bucket's; 0 with no such item among the items.
	span, spanCap := int64(0), min(d.span, int64(MaxLeaseTTL))
	for i := range d.items {
		it := &d.items[i]
		var c *compiled
		if it.hasLimit {
			var err error
			if c, err = m.compileInline(&it.lim); err != nil {
				return invalid(StatusInvalidLimit, "key %q: %v", it.key, err)
			}
		}
		j := m.keys.findBytes(m.entries, it.key)
		switch {
		case j >= 0:
			items[i].index, items[i].limit = j, m.entries[j].limit()
			items[i].lim = m.limits.get(items[i].limit)
		case it.hasLimit:
			m.inline[i] = *c
			items[i].lim, items[i].fresh = &m.inline[i], true
		default:
			return Result{Status: StatusNoLimit, Message: "key " + string(it.key) + " has no limit; set one or send one with the acquire",
				NoLimitKey: string(it.key)}
		}
		items[i].count, items[i].want = it.count, it.want
		ttl = min(ttl, items[i].lim.maxLease)
		if answersSpan(items[i].lim, d.spanB) {
			spanCap = min(spanCap, items[i].lim.maxLease)
			span = spanCap
		}
	}
	if d.ttl != 0 {
		span = 0 // a lease counts over its own life
	}
	for i := range items {
		if items[i].lim.def.Algorithm == Concurrency && ttl == 0 {
			return invalid(StatusInvalidTTL, "key %q is a concurrency limit: it needs a lease TTL above 0, and no strict bucket in the same acquire", d.items[i].key)
		}
	}
	for i := range items {
		if items[i].fresh {
			j := m.addKey(string(d.items[i].key), items[i].lim, false)
			items[i].index, items[i].limit = j, m.entries[j].limit()
		}
	}
	client := "" // no session: the command has no client id
	if s != nil {
		client = s.client // shared with the session, not copied
	}
	res := Result{Items: make([]ItemResult, len(items))}
	for i := range items {
		// Adding keys may have grown the limit table: point into it afresh.
		items[i].lim = m.limits.get(items[i].limit)
		e := &m.entries[items[i].index]
		items[i].hold = m.held[lessee{e.key, client}]
		items[i].lessees = e.lessees()
		if items[i].hold == nil {
			items[i].lessees++
		}
		res.Lessees = max(res.Lessees, items[i].lessees)
	}

	now, until := m.now, m.now+ttl
	if len(items) == 1 && d.paced && ttl > 0 && items[0].lim.def.Algorithm == SlidingWindow {
		return m.grantPieces(items, client, now, until, d.after, res)
	}
	central := ttl == 0
	if central {
		until = now + span // windows count a central grant over its span
	}
	var spans [MaxItems]limiter.Span
	if len(items) == 1 {
		// One item: its take is its check.
		var d limiter.Decision
		if res.Items[0], spans[0], d = m.grantOne(&items[0], now, until, central); !d.Allowed {
			res.RetryAfter = d.RetryAfter
			res.Status = StatusDenied
			if ttl == 0 && d.RetryAfter != limiter.Never {
				m.claim(items, client, now+items[0].lim.maxLease)
			}
			return res
		}
		res.RetryAfter = d.RetryAfter
	} else if !m.grantAll(items, now, until, central, &res, &spans) {
		return res
	}
	res.Status = StatusOK
	if ttl > 0 {
		res.LeaseID, res.TTL = m.grantLease(client, items, spans[:len(items)], res.Items, until), time.Duration(ttl)
	} else {
		res.RetryAfter = 0 // no lessee to pace
		res.TTL = time.Duration(span)
	}
	return res
}

// answersSpan reports whether an item of limit c answers a central
// acquire's span (Acquire.Span): a sliding window always, which counts the
// grant over it; a token bucket when the acquire asks (spanBuckets) and it
// grants leases, as the longest its bound lets the grant be spent after T
// (Λ = its MaxLease). A strict bucket with no leases has no Λ to answer.
func answersSpan(c *compiled, spanBuckets bool) bool {
	switch c.def.Algorithm {
	case SlidingWindow:
		return true
	case TokenBucket:
		return spanBuckets && c.maxLease > 0
	}
	return false
}

// grantOne takes an item's count and then, of the rest of its want, a fair
// share, and paces a lease whose share fell short. Each take's decision
// already holds what is left after it, so nothing is decided twice. If the
// count does not fit, nothing is taken and the result holds the key's
// Remaining with the denial.
//
// The share is split among the key's lessees, the distinct clients holding
// live leases on it, the asking client counted once whether or not it holds
// one: n of them. Of what is left after the count, R, an item gets up to the
// larger of R/n (a share of the stock) and ⌈F/n⌉ (a share of the refill F
// over the lease's life, at most what the key holds: see compiled.refill),
// never more than R. The stock share lets a lone client take a full bucket;
// the refill share keeps a grant worth a Raft write when the stock is low
// because every lessee keeps draining it. Clients, not leases: a client
// holding many small leases would otherwise shrink everyone's share,
// its own included, until grants were a token each.
//
// A central acquire (no lease; its window items counted from now to until,
// the span it asked: Acquire.Span) is not shared out: its want is
// requests to be decided now (the SDK sends the concurrent requests of a
// key in one Acquire, count the smallest, want their sum), each spent the
// moment the answer arrives, so it gets up to R, first come first served,
// as that many separate central acquires would. Splitting it among the
// lessees refused requests the key had room for.
//
// A grant short of its want means the key is contended. Its decision's
// RetryAfter is then the time until the key, if nobody took from it, would
// hold max(F, n·granted) (at most the key's capacity): before that the
// client's next share would be smaller than a lease's worth of refill, or
// than this one, and asking would spend a Raft write on a sliver. It is at
// most the lease's life: by then the leases that made the key contended have
// been renewed or have ended, and the split is worth deciding again. It is 0
// for a grant in full, a central one (no lease) and a concurrency limit
// (nothing refills: units come back when leases end).
func (m *Machine) grantOne(it *resolved, now, until int64, central bool) (ItemResult, limiter.Span, limiter.Decision) {
	d, sp := m.decide(it, now, until, it.count, true)
	if !d.Allowed {
		return ItemResult{Remaining: d.Remaining}, sp, d
	}
	r := ItemResult{Granted: it.count, Remaining: d.Remaining}
	d.RetryAfter = 0
	if it.want == it.count {
		return r, sp, d
	}
	n := int64(it.lessees)
	var refill int64 // over a lease's life; a central grant's is 0: no pace
	if !central {
		refill = it.lim.refill(until - now)
	}
	share := min(d.Remaining, max(d.Remaining/n, ceilDiv(refill, n)))
	if central {
		share = d.Remaining // central: requests, not a holding (see above)
	}
	if extra := min(it.want-it.count, share); extra > 0 {
		// Within Remaining, so it cannot fail; a window counts both takes
		// in the same span.
		dx, _ := m.decide(it, now, until, extra, true)
		r.Granted += extra
		r.Remaining = dx.Remaining
	}
	if r.Granted < it.want && refill > 0 {
		target := max(refill, satMul(n, r.Granted))
		if c := it.lim; c.def.Algorithm == TokenBucket {
			target = min(target, c.def.Burst-c.reserve)
		} else {
			target = min(target, c.def.Limit)
		}
		if p, _ := m.decide(it, now, until, target, false); !p.Allowed && p.RetryAfter != limiter.Never {
			d.RetryAfter = min(p.RetryAfter, time.Duration(until-now))
		}
	}
	return r, sp, d
}

// grantPieces decides a paced acquire of one sliding-window key (see
// Acquire.Paced) and fills in res: a lease whose tokens come in pieces of x,
// one in each of the window's buckets (limiter.SlidingWindow.TakePieces)
// from a first bucket to the last of its life, each spendable only within
// its bucket. A piece counts in the slot windows of its bucket alone, so a
// lease costs the window what its tokens spent at an even pace would, where
// a lease counted over its span (grantOne) costs the window its tokens for
// its whole life and a window more (DESIGN.md, "Sliding windows").
//
// Which buckets. The life asked for is rounded up to the end of its last
// bucket and made at least two buckets (now's and the next), at most a
// window from now; pieces start no earlier than the bucket of PacedAfter,
// the end of what the client already holds, so a client that renews
// during its last piece continues its lease and stays one of the key's
// lessees throughout.
//
// How much. The window is paced: pieces never take a bucket past cap =
// ⌈Limit/(Slots+1)⌉ (Slots the window's buckets), what each bucket can hold
// when every slot window of Slots+1 buckets holds Limit. A client's piece
// is its share of that, ⌊cap/n⌋ among the key's n lessees (at least 1), less
// if its Want, a rate over the life it asked, asks less a bucket, at least
// its Count. Of the buckets left, the lease takes the run up to the last whose
// pieces, each at most what every bucket of the run has below the cap, add
// up to the most, cut to what every slot window they overlap has room for
// (PieceRoom). If that is below Count the acquire is denied, with the time
// to the next bucket as its RetryAfter, and a client holding no lease on
// the key becomes one of its lessees for the life it asked (claim).
//
// A lease short of what its Want asked carries a pace: the time until its
// last piece begins, when the next lease would begin where this one ends.
func (m *Machine) grantPieces(items []resolved, client string, now, until, after int64, res Result) Result {
	it := &items[0]
	c := it.lim
	w := c.window
	e := &m.entries[it.index]
	ws := m.windows[e.key]
	fresh := ws == nil
	if fresh {
		ws = &window{gen: m.gen}
	}
	st := &ws.WindowState
	g, win := int64(w.Width()), int64(w.Window())
	k0 := w.Slot(st, now)
	last := max((until-1)/g, k0+1)
	if (last+1)*g > now+win {
		last = max((now+win)/g-1, k0)
	}
	expires := min((last+1)*g, now+win)
	first := max(k0, after/g)
	n := int64(it.lessees)
	capacity := max(ceilDiv(c.def.Limit, int64(w.Slots())+1), it.count)
	life := until - now
	// target returns what m pieces are worth to the client: its Want, a
	// rate over the life it asked, over m buckets, at most its share of
	// their cap, at least Count a piece.
	target := func(m int64) int64 {
		want := ceilDiv(satMul(satMul(it.want, g), m), life)
		return max(min(want, satMul(capacity, m)/n), satMul(it.count, m))
	}
	// Candidate runs end at last and start at from = k, longest first; a
	// run's bound is its target and what its buckets have below the cap
	// (Piece sizes: the least of them, one more for a trailing run of
	// buckets with room for it). The best run is the one whose pieces,
	// cut to what every slot window has room for, add up to the most.
	var from, total int64
	avail, extra := int64(math.MaxInt64), int64(0)
	type run struct{ from, bound int64 }
	var buf [limiter.MaxSlots + 2]run
	runs := buf[:0]
	for k := last; k >= first; k-- {
		a := capacity - w.Booked(st, now, k)
		if a < it.count {
			break
		}
		if a < avail {
			// Only the buckets after k can hold one more than k.
			extra, avail = last-k, a
		}
		m := last - k + 1
		runs = append(runs, run{k, min(target(m), satMul(avail, m)+min(extra, m-1))})
	}
	slices.SortStableFunc(runs, func(a, b run) int { return cmp.Compare(b.bound, a.bound) })
	for _, r := range runs {
		if r.bound <= total {
			break
		}
		// The most of [count·m, bound] that fits: fitting is monotone.
		m := last - r.from + 1
		lo, hi := satMul(it.count, m)-1, r.bound
		for lo < hi {
			mid := lo + (hi-lo+1)/2
			if w.PiecesFit(st, now, r.from, last, mid) {
				lo = mid
			} else {
				hi = mid - 1
			}
		}
		if lo > total && lo >= satMul(it.count, m) {
			from, total = r.from, lo
		}
	}
	if total == 0 {
		res.Status = StatusDenied
		res.Items[0].Remaining = w.CheckSpan(st, now, now, 0).Remaining
		next := (k0 + 1) * g
		if first > last {
			next = (first - 1) * g // asked before its last piece began
		}
		res.RetryAfter = time.Duration(max(next-now, 1))
		m.claim(items, client, expires)
		return res
	}
	if !fresh {
		ws = m.ownWindow(e.key, ws)
		st = &ws.WindowState
	}
	sp := w.TakePieces(st, now, from, last, total)
	if fresh {
		m.windows[e.key] = ws
	}
	res.Items[0] = ItemResult{Granted: total, Remaining: w.CheckSpan(st, now, now, 0).Remaining}
	if total < ceilDiv(satMul(satMul(it.want, g), last-from+1), life) {
		res.RetryAfter = time.Duration(max(last*g-now, 0))
	}
	res.Status = StatusOK
	res.LeaseID = m.grantLease(client, items, []limiter.Span{sp}, res.Items, expires)
	res.TTL = time.Duration(expires - now)
	res.Piece, res.Pieces = time.Duration(g), int32(sp.Last-sp.First+1)
	return res
}

// claim makes a client that a sliding window just refused, and that holds no
// lease on it, one of the key's lessees until expires: a lease of no tokens.
// Pieced leases book the window's buckets ahead, each lessee its share of
// them; a client that is not a lessee finds every bucket booked by those
// that are, and would be refused for as long as they go on renewing. Once
// it counts, the lessees' next shares leave it its part.
func (m *Machine) claim(items []resolved, client string, expires int64) {
	if client == "" || len(items) != 1 || items[0].hold != nil || items[0].lim.def.Algorithm != SlidingWindow {
		return
	}
	m.grantLease(client, items, []limiter.Span{{}}, []ItemResult{{}}, expires)
}

// ceilDiv returns ⌈a/b⌉ for a >= 0, b > 0.
func ceilDiv(a, b int64) int64 { return a/b + min(a%b, 1) }

// satMul returns a·b for a, b >= 0, or MaxInt64 if that overflows.
func satMul(a, b int64) int64 {
	if hi, lo := bits.Mul64(uint64(a), uint64(b)); hi != 0 || lo > math.MaxInt64 {
		return math.MaxInt64
	}
	return a * b
}

// grantAll decides an acquire of several items: all counts are checked before
// any is taken. It fills res and spans and reports whether the items were
// granted; if not, res is the denial. A grant's RetryAfter is the longest of
// its items' paces.
func (m *Machine) grantAll(items []resolved, now, until int64, central bool, res *Result, spans *[MaxItems]limiter.Span) bool {
	denied := false
	for i := range items {
		if dec, _ := m.decide(&items[i], now, until, items[i].count, false); !dec.Allowed {
			denied = true
			res.RetryAfter = max(res.RetryAfter, dec.RetryAfter)
		}
	}
	if denied {
		// Nothing is taken: each item's Remaining is what it holds now.
		for i := range items {
			d, _ := m.decide(&items[i], now, until, 0, false)
			res.Items[i].Remaining = d.Remaining
		}
		res.Status = StatusDenied
		return false
	}
	for i := range items {
		var d limiter.Decision
		res.Items[i], spans[i], d = m.grantOne(&items[i], now, until, central) // checked above: it fits
		res.RetryAfter = max(res.RetryAfter, d.RetryAfter)
	}
	return true
}

// decide decides taking n from an item's key for use from now to until and,
// if take is set and it is allowed, takes it. A strict bucket's reserve is
// not part of Remaining. The Span is a sliding window's, for Return.
func (m *Machine) decide(it *resolved, now, until, n int64, take bool) (limiter.Decision, limiter.Span) {
	e := &m.entries[it.index]
	c := it.lim
	switch c.def.Algorithm {
	case TokenBucket:
		st := limiter.BucketState{TAT: e.state}
		d := c.bucket.TakeLeaving(&st, now, n, c.reserve)
		if take {
			e.state = st.TAT
		}
		d.Remaining = max(d.Remaining-c.reserve, 0)
		return d, limiter.Span{}
	case SlidingWindow:
		ws := m.windows[e.key]
		fresh := ws == nil
		if fresh {
			ws = &window{gen: m.gen}
		}
		if !take {
			return c.window.CheckSpan(&ws.WindowState, now, until, n), limiter.Span{}
		}
		if !fresh {
			ws = m.ownWindow(e.key, ws)
		}
		d, sp := c.window.TakeSpan(&ws.WindowState, now, until, n)
		if fresh && ws.Counts != nil { // only a take that counted something makes state
			m.windows[e.key] = ws
		}
		return d, sp
	default:
		st := limiter.ConcurrencyState{Held: e.state}
		d := c.conc.Check(st, n)
		if take {
			d = c.conc.Take(&st, n)
			e.state = st.Held
		}
		if !d.Allowed && d.RetryAfter != limiter.Never {
			// Units come back when leases end, at the latest a max lease
			// from now.
			d.RetryAfter = time.Duration(c.maxLease)
		}
		return d, limiter.Span{}
	}
}

// release gives a lease's unused tokens back and ends the lease.
func (m *Machine) release(d *decoder) Result {
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
	if len(d.unused) != 0 && len(d.unused) != len(l.items) {
		return invalid(StatusInvalidCount, "release names %d unused counts for a lease of %d keys", len(d.unused), len(l.items))
	}
	for i, it := range l.items {
		if len(d.unused) != 0 && (d.unused[i] < 0 || d.unused[i] > it.granted) {
			return invalid(StatusInvalidCount, "key %q: unused %d must be in [0, %d]", it.key, d.unused[i], it.granted)
		}
	}
	for i := range l.items {
		it := &l.items[i]
		unused := it.granted
		if len(d.unused) != 0 {
			unused = d.unused[i]
		}
		j := m.entryOf(it)
		if j < 0 || m.entries[j].limit() != it.limit {
			continue // the key was deleted or redefined: refund nothing
		}
		e := &m.entries[j]
		c := m.limits.get(it.limit)
		switch c.def.Algorithm {
		case TokenBucket:
			st := limiter.BucketState{TAT: e.state}
			c.bucket.Return(&st, m.now, unused)
			if len(m.floors) > 0 {
				st.TAT = max(st.TAT, m.floors[it.key]) // a refund undoes no Restrict
			}
			e.state = st.TAT
		case SlidingWindow:
			if ws := m.windows[it.key]; ws != nil {
				ws = m.ownWindow(it.key, ws)
				c.window.Return(&ws.WindowState, m.now, it.span, it.granted, unused)
			}
		}
	}
	m.endLease(l) // also returns concurrency units
	return Result{Status: StatusOK}
}
