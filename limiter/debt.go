package limiter

// Debt, blocks and lowered levels of a token bucket. Each is a push of the
// bucket's TAT forward, so a bucket needs no state beyond BucketState for
// them: a bucket in debt is one whose TAT is more than τ = Cost(Burst) ahead
// of now, and its refill repays the debt before any take is allowed again.
// None of them ever moves the TAT back: they never give a bucket tokens.

// Level returns the whole tokens the bucket holds at now, rounded down:
// Burst - ⌈(TAT-now)·Rate/Period⌉. Unlike Available it goes below zero, to
// minus the tokens the bucket owes: a bucket charged into debt, or blocked
// past now (see Charge and Lower). It saturates rather than overflow.
func (b TokenBucket) Level(s BucketState, now int64) int64 {
	if s.TAT <= now {
		return b.burst
	}
	return b.burst - mulDivCeil(subSat(s.TAT, now), b.rate, b.period)
}

// Charge takes up to n tokens at log time now whether or not the bucket holds
// them, and returns how many it took: it is how tokens already spent are
// accounted for. The bucket may go below empty, into debt, but never more
// than maxDebt tokens below: what would take it further is not charged (it
// is forgiven), so charged is less than n only then. A negative maxDebt
// keeps -maxDebt tokens in the bucket instead (a strict bucket's reserve, less
// its debt cap). n <= 0 charges nothing.
//
// The bucket's TAT moves forward by exactly Cost(charged), never past
// now + ⌊(Burst+maxDebt)·Period/Rate⌋, the TAT of a bucket that owes exactly
// maxDebt tokens. If it is already there or beyond, nothing is charged and
// nothing changes. A take is allowed again only once refill has repaid the
// debt: the bucket then holds at least the tokens taken.
func (b TokenBucket) Charge(s *BucketState, now, n, maxDebt int64) (charged int64) {
	if n <= 0 {
		return 0
	}
	tat := max(s.TAT, now)
	var span int64 // how far past now the TAT may go
	if depth := addSat(b.burst, maxDebt); depth > 0 {
		span = mulDivFloor(depth, b.period, b.rate)
	}
	room := subSat(addSat(now, span), tat) // nanoseconds the TAT may still move
	if room <= 0 {
		return 0
	}
	if cost := mulDivCeil(n, b.period, b.rate); cost <= room {
		s.TAT = tat + cost // within room: no overflow
		return n
	}
	// ⌊room·Rate/Period⌋ tokens cost at most room: Cost rounds up to a whole
	// nanosecond and room is whole. One more would not fit.
	charged = mulDivFloor(room, b.rate, b.period)
	if charged > 0 {
		s.TAT = tat + mulDivCeil(charged, b.period, b.rate)
	}
	return charged
}

// Lower makes the bucket hold at most level tokens at log time at, and from
// then on refill from there at its rate; it never raises what the bucket
// holds. level may be negative: the bucket then owes -level tokens at at.
// A level above Burst changes nothing.
//
// at may be later than the latest time the bucket has seen: lowering to 0 at
// a future time T means that no take of a token is allowed before T, and
// that the bucket refills from empty from T (see BlockUntil).
//
// The TAT becomes at least at + Cost(Burst-level), rounded up, so the bucket
// holds at most level at at, never a fraction more.
func (b TokenBucket) Lower(s *BucketState, at, level int64) {
	if level > b.burst {
		return
	}
	s.TAT = max(s.TAT, addSat(at, mulDivCeil(subSat(b.burst, level), b.period, b.rate)))
}

// BlockUntil makes the bucket allow no take of a token before log time until,
// and be empty at until, refilling from there: Lower(s, until, 0). It never
// shortens a longer block or a deeper debt.
func (b TokenBucket) BlockUntil(s *BucketState, until int64) { b.Lower(s, until, 0) }
