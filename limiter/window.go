package limiter

import (
	"errors"
	"fmt"
	"time"
)

// MaxSlots is the largest number of sub-windows a SlidingWindow may use.
const MaxSlots = 64

// MaxWindowLimit is the largest limit a SlidingWindow accepts. It keeps every sum
// over the counters far from int64 overflow.
const MaxWindowLimit = 1 << 58

// SlidingWindow admits at most Limit tokens in any window of length Window,
// counting in Slots sub-windows ("slots") of width g = ⌈Window/Slots⌉.
//
// A grant is a number of tokens that may be spent at any instant of a span
// [from, until] of log time: a single instant for a central decision, a lease's
// life for a lease. Every slot window [j-Slots, j] (Slots+1 consecutive slots,
// which covers every real window of length Window that ends in slot j) counts
// each grant that overlaps it once, and a new grant is allowed only if every
// slot window it overlaps stays within Limit. Since any real window of length
// Window lies inside some slot window, no real window ever sees more than Limit.
//
// Under-admission, the price of that guarantee, is bounded: a slot window is
// (Slots+1)·g long, Window+g when Slots divides Window, so a client that spends
// steadily at the limit gets at least Limit·Window/((Slots+1)·g) per Window:
// Limit·Slots/(Slots+1) when Slots divides Window, less when g is rounded up
// (Window 9ns in 8 slots of 2ns counts in 18ns slot windows, so Limit/2 per
// Window). A grant whose span crosses k slot boundaries is counted in k more
// slot windows than an instant one. The usual "weighted previous window"
// estimate admits more but can exceed Limit in some window, which is why it is
// not offered.
//
// A grant may also come in pieces (TakePieces): so many tokens in each slot of
// a range, each spendable only within its own slot. A piece counts like an
// instant grant in its slot, so a pieced grant over a window's worth of slots
// costs each slot window only the pieces of the slots it covers, where a span
// over the same slots counts all its tokens in every slot window it overlaps:
// a client that spends at an even pace can hold tokens for a long time at the
// cost of an instant grant.
//
// A SlidingWindow is an immutable value, safe for concurrent use. The state it
// operates on is the caller's and is not synchronised.
type SlidingWindow struct {
	limit  int64 // tokens per window, 0..MaxWindowLimit
	window int64 // nanoseconds, > 0
	slots  int64 // 1..MaxSlots, <= window
	width  int64 // slot width g in nanoseconds
	ring   int64 // slots held by a state: 2·slots+4
}

// WindowState is the mutable state of one sliding window. The zero value is an
// empty window; the first allowed take allocates its counters.
type WindowState struct {
	// Base is the number of the oldest slot the counters describe; slot k
	// covers log time [k·g, (k+1)·g).
	Base int64
	// Counts holds two rings of 2·Slots+4 counters each: tokens of grants by
	// the slot their span starts in, then by the slot it ends in. Slot k is at
	// index k mod ring length within each.
	Counts []int64
}

// Span is the range of slots a grant was counted in, as returned by
// TakeSpan or TakePieces; Return needs it back to refund exactly what was
// counted.
type Span struct {
	First, Last int64
	// Pieced: the grant is the same number of tokens in each slot from
	// First to Last, each spendable only within its own slot (TakePieces),
	// rather than all of them at any instant of the span.
	Pieced bool
}

// NewSlidingWindow returns a window admitting limit tokens per window, counted in
// the given number of slots. Slots greater than the window in nanoseconds are
// reduced to it (a window of 1ns has one slot). limit may be 0 (admit nothing).
func NewSlidingWindow(limit int64, window time.Duration, slots int) (SlidingWindow, error) {
	var errs []error
	if limit < 0 || limit > MaxWindowLimit {
		errs = append(errs, fmt.Errorf("%w: window limit %d must be in [0, %d]", ErrInvalidLimit, limit, int64(MaxWindowLimit)))
	}
	if window <= 0 || window > MaxRefill {
		errs = append(errs, fmt.Errorf("%w: window %v must be positive and at most %v", ErrInvalidLimit, window, MaxRefill))
	}
	if slots < 1 || slots > MaxSlots {
		errs = append(errs, fmt.Errorf("%w: slots %d must be in [1, %d]", ErrInvalidLimit, slots, MaxSlots))
	}
	if len(errs) > 0 {
		return SlidingWindow{}, errors.Join(errs...)
	}
	s := min(int64(slots), int64(window))
	w := SlidingWindow{limit: limit, window: int64(window), slots: s}
	w.width = (w.window + s - 1) / s
	w.ring = 2*s + 4
	return w, nil
}

// Limit returns the most tokens admitted in any window.
func (w SlidingWindow) Limit() int64 { return w.limit }

// Window returns the window length.
func (w SlidingWindow) Window() time.Duration { return time.Duration(w.window) }

// Slots returns the number of slots per window actually used.
func (w SlidingWindow) Slots() int { return int(w.slots) }

// Check reports what Take(s, now, n) would decide, without changing s.
func (w SlidingWindow) Check(s *WindowState, now, n int64) Decision {
	return w.CheckSpan(s, now, now, n)
}

// Take takes n tokens spent at the instant now.
func (w SlidingWindow) Take(s *WindowState, now, n int64) Decision {
	d, _ := w.TakeSpan(s, now, now, n)
	return d
}

// CheckSpan reports what TakeSpan would decide, without changing s.
func (w SlidingWindow) CheckSpan(s *WindowState, now, until, n int64) Decision {
	k0, k1 := w.span(s, now, until)
	return w.decide(s, now, k0, k1, n)
}

// TakeSpan takes n tokens that may be spent at any instant from now to until.
// until is clamped to [now, now+Window]. n == 0 is allowed and changes nothing;
// n < 0 or n > Limit is denied with RetryAfter Never. The returned Span is what
// Return needs to refund the grant.
func (w SlidingWindow) TakeSpan(s *WindowState, now, until, n int64) (Decision, Span) {
	k0, k1 := w.span(s, now, until)
	d := w.decide(s, now, k0, k1, n)
	if !d.Allowed || n == 0 {
		return d, Span{}
	}
	w.advance(s, k0)
	if s.Counts == nil {
		s.Counts = make([]int64, 2*w.ring)
	}
	*w.start(s, k0) += n
	*w.end(s, k1) += n
	return d, Span{First: k0, Last: k1}
}

// Return refunds a grant of granted tokens counted in sp, of which unused were
// never spent, at log time now. The unused tokens leave every slot window; the
// spent ones stop counting in slot windows after now's slot. The unused
// tokens of a pieced grant are its last pieces' (see TakePieces): a holder
// spends a piece only within its slot, so what it never spent is the rest of
// the piece it was in and every piece after.
func (w SlidingWindow) Return(s *WindowState, now int64, sp Span, granted, unused int64) {
	if s.Counts == nil || granted <= 0 || unused < 0 || unused > granted {
		return
	}
	kt, _ := w.span(s, now, now)
	w.advance(s, kt)
	top := s.Base + w.ring
	if sp.Pieced {
		m := sp.Last - sp.First + 1
		for k := sp.Last; k >= sp.First && unused > 0; k-- {
			take := min(unused, Piece(granted, m, k-sp.First))
			unused -= take
			if k >= s.Base && k < top {
				p, e := w.start(s, k), w.end(s, k)
				*p, *e = max(*p-take, 0), max(*e-take, 0)
			}
		}
		return
	}
	if sp.Last < s.Base || sp.Last >= top {
		return // the grant no longer counts anywhere
	}
	if sp.First >= s.Base {
		p := w.start(s, sp.First)
		*p = max(*p-unused, 0)
	}
	e := w.end(s, sp.Last)
	*e = max(*e-unused, 0)
	// The spent tokens were spent by now: shorten their span to end here.
	if used := granted - unused; used > 0 && kt < sp.Last {
		moved := min(used, *e)
		*e -= moved
		*w.end(s, max(kt, sp.First)) += moved
	}
}

// Width returns the slot width g: slot k covers log time [k·g, (k+1)·g).
func (w SlidingWindow) Width() time.Duration { return time.Duration(w.width) }

// Slot returns the slot a grant made at now starts in: now's slot, or a later
// one if time went backwards below what s has seen.
func (w SlidingWindow) Slot(s *WindowState, now int64) int64 {
	k0, _ := w.span(s, now, now)
	return k0
}

// Booked returns the tokens of grants counted as starting in slot k, as the
// state holds them at now: for pieces and instant grants, what slot k was
// given. 0 outside the slots the state holds.
func (w SlidingWindow) Booked(s *WindowState, now, k int64) int64 {
	return w.get(s, k, w.Slot(s, now)-w.slots-1, false)
}

// Piece returns the tokens of piece i (0 for the first) of a pieced grant
// of total tokens in m pieces: total/m, and one more for each of the last
// total mod m pieces, so that pieces differ by at most one.
func Piece(total, m, i int64) int64 {
	if m <= 0 || i < 0 || i >= m {
		return 0
	}
	q, r := total/m, total%m
	if i >= m-r {
		return q + 1
	}
	return q
}

// PiecesFit reports whether a pieced grant of total tokens in the slots
// from first to last (TakePieces) keeps every slot window within Limit.
// first and last are bounded as TakePieces bounds them; an empty range fits
// nothing but 0.
func (w SlidingWindow) PiecesFit(s *WindowState, now, first, last, total int64) bool {
	kNow := w.Slot(s, now)
	first, last = max(first, kNow), min(last, kNow+w.slots+1)
	if last < first {
		return total == 0
	}
	if total < 0 || total > w.limit*(last-first+1) {
		return false
	}
	m := last - first + 1
	floor := kNow - w.slots - 1
	top := s.Base + w.ring
	var ends, starts int64
	for k := first - w.slots; k < top; k++ {
		ends += w.get(s, k, floor, true)
	}
	for k := first + 1; k < top; k++ {
		starts += w.get(s, k, floor, false)
	}
	// in is the grant's tokens in slot window j: the pieces of slots
	// max(j-slots, first)..min(j, last), kept as a running sum.
	var in int64
	for j := first; j <= last+w.slots; j++ {
		if j <= last {
			in += Piece(total, m, j-first)
		}
		if k := j - w.slots - 1; k >= first && k <= last {
			in -= Piece(total, m, k-first)
		}
		if ends-starts+in > w.limit {
			return false
		}
		ends -= w.get(s, j-w.slots, floor, true)
		starts -= w.get(s, j+1, floor, false)
	}
	return true
}

// TakePieces takes a pieced grant of total tokens in the slots from first to
// last, Piece(total, m, i) of them in the i-th, each spendable only within
// its own slot ([k·g, (k+1)·g) for slot k), and returns the Span that Return
// needs. first is raised to now's slot and last capped at the last slot a
// grant made at now may reach (now + Window). The caller checks PiecesFit
// first. A piece counts in the slot windows of its one slot only, as an
// instant grant does, so a pieced grant counts in window j only the pieces
// of the slots j covers, where a span counts all of its tokens in every
// window it overlaps. total ≤ 0 or an empty range takes nothing.
func (w SlidingWindow) TakePieces(s *WindowState, now, first, last, total int64) Span {
	kNow := w.Slot(s, now)
	first, last = max(first, kNow), min(last, kNow+w.slots+1)
	if total <= 0 || last < first {
		return Span{}
	}
	w.advance(s, kNow)
	if s.Counts == nil {
		s.Counts = make([]int64, 2*w.ring)
	}
	m := last - first + 1
	for k := first; k <= last; k++ {
		p := Piece(total, m, k-first)
		*w.start(s, k) += p
		*w.end(s, k) += p
	}
	return Span{First: first, Last: last, Pieced: true}
}

// Empty reports whether no slot window that contains now or a later time counts
// any grant, in which case the state carries no information and may be
// forgotten.
func (w SlidingWindow) Empty(s *WindowState, now int64) bool {
	return w.resetAfter(s, now) == 0
}

// span returns the first and last slot of a grant for [now, until], with now
// clamped so that time going backwards never reaches below the state's base.
func (w SlidingWindow) span(s *WindowState, now, until int64) (int64, int64) {
	now = max(now, 0)
	until = min(max(until, now), addSat(now, w.window))
	k0 := max(now/w.width, s.Base+w.slots+1)
	k1 := max(until/w.width, k0)
	return k0, k1
}

// advance moves the state's base up to k0-slots-1, clearing the slots that fall
// off the bottom of the rings, so that slots [k0-slots-1, k0+slots+2] are held.
func (w SlidingWindow) advance(s *WindowState, k0 int64) {
	nb := k0 - w.slots - 1
	if nb <= s.Base {
		return
	}
	if s.Counts != nil {
		for k := s.Base; k < min(nb, s.Base+w.ring); k++ {
			*w.start(s, k) = 0
			*w.end(s, k) = 0
		}
	}
	s.Base = nb
}

func (w SlidingWindow) start(s *WindowState, k int64) *int64 { return &s.Counts[k%w.ring] }
func (w SlidingWindow) end(s *WindowState, k int64) *int64   { return &s.Counts[w.ring+k%w.ring] }

// get returns the start or end count of slot k as the state would hold it once
// its base reached at least floor: zero outside the held slots.
func (w SlidingWindow) get(s *WindowState, k, floor int64, ends bool) int64 {
	if s.Counts == nil || k < max(s.Base, floor) || k >= s.Base+w.ring {
		return 0
	}
	if ends {
		return *w.end(s, k)
	}
	return *w.start(s, k)
}

// worst returns the largest count of any slot window that a grant spanning slots
// [k0, k1] would overlap: windows [j-slots, j] for j in [k0, k1+slots].
//
// A grant with span [a, b] overlaps window [j-S, j] iff a <= j and b >= j-S, so
// the window's count is (grants ending at or after j-S) minus (grants starting
// after j), two suffix sums that move by one slot per step of j.
func (w SlidingWindow) worst(s *WindowState, k0, k1 int64) int64 {
	floor := k0 - w.slots - 1
	top := s.Base + w.ring
	var ends, starts int64
	for k := k0 - w.slots; k < top; k++ {
		ends += w.get(s, k, floor, true)
	}
	for k := k0 + 1; k < top; k++ {
		starts += w.get(s, k, floor, false)
	}
	var most int64
	for j := k0; j <= k1+w.slots; j++ {
		most = max(most, ends-starts)
		ends -= w.get(s, j-w.slots, floor, true)
		starts -= w.get(s, j+1, floor, false)
	}
	return most
}

func (w SlidingWindow) decide(s *WindowState, now, k0, k1, n int64) Decision {
	most := w.worst(s, k0, k1)
	d := Decision{Remaining: max(w.limit-most, 0), ResetAfter: w.resetAfter(s, now)}
	switch {
	case n < 0 || n > w.limit:
		d.RetryAfter = Never
		return d
	case n <= w.limit-most:
		d.Allowed = true
		d.Remaining -= n
		if n > 0 {
			// The grant itself keeps the window busy until its last slot
			// window closes.
			last := max(k1+w.slots+1, w.lastEnd(s)+w.slots+1)
			d.ResetAfter = time.Duration(max(last*w.width-max(now, 0), 0))
		}
		return d
	}
	// Slide the grant's span forward slot by slot; once every counted grant is
	// out of its slot windows it fits, so this ends within ring steps.
	if shift := w.firstFit(s, k0, k1-k0, w.limit-n); shift <= w.ring {
		d.RetryAfter = time.Duration(max((k0+shift)*w.width-max(now, 0), 1))
		return d
	}
	d.RetryAfter = Never // unreachable for n <= limit
	return d
}

// firstFit returns the smallest shift >= 1 such that a grant spanning slots
// [k0+shift, k0+shift+m] leaves every slot window it overlaps with at most
// room tokens counted: the least shift with worst(s, k0+shift, k0+shift+m) <=
// room. It is that loop done in one pass: the count of slot window j, for j >
// k0, does not depend on the shift, so it scans j upwards once, restarting the
// candidate after every window over room. Past ring shifts it returns ring+1.
func (w SlidingWindow) firstFit(s *WindowState, k0, m, room int64) int64 {
	first := k0 + 1
	floor := first - w.slots - 1
	top := s.Base + w.ring
	var ends, starts int64
	for k := first - w.slots; k < top; k++ {
		ends += w.get(s, k, floor, true)
	}
	for k := first + 1; k < top; k++ {
		starts += w.get(s, k, floor, false)
	}
	cand := first // the earliest start not yet ruled out
	for j := first; j <= k0+w.ring+m+w.slots; j++ {
		if ends-starts > room {
			cand = j + 1
		} else if j-cand == m+w.slots {
			return cand - k0
		}
		ends -= w.get(s, j-w.slots, floor, true)
		starts -= w.get(s, j+1, floor, false)
	}
	return w.ring + 1
}

// lastEnd returns the highest slot in which a counted grant ends, or
// math.MinInt64/2 when there is none.
func (w SlidingWindow) lastEnd(s *WindowState) int64 {
	if s.Counts != nil {
		for k := s.Base + w.ring - 1; k >= s.Base; k-- {
			if *w.end(s, k) != 0 {
				return k
			}
		}
	}
	return -1 << 61
}

func (w SlidingWindow) resetAfter(s *WindowState, now int64) time.Duration {
	last := w.lastEnd(s) + w.slots + 1 // first slot no window of it reaches
	return time.Duration(max(last*w.width-max(now, 0), 0))
}
