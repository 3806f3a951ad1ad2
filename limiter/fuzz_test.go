package limiter

import (
	"encoding/binary"
	"errors"
	"math"
	"math/big"
	"testing"
	"time"
)

// fuzzInput decodes fuzz bytes deterministically; reads past the end give 0.
type fuzzInput struct{ data []byte }

func (in *fuzzInput) more() bool { return len(in.data) > 0 }

func (in *fuzzInput) byte() byte {
	if len(in.data) == 0 {
		return 0
	}
	b := in.data[0]
	in.data = in.data[1:]
	return b
}

func (in *fuzzInput) uint(size int) uint64 {
	var buf [8]byte
	n := copy(buf[:size], in.data)
	in.data = in.data[n:]
	return binary.LittleEndian.Uint64(buf[:])
}

// int63 returns a non-negative int64 from size bytes.
func (in *fuzzInput) int63(size int) int64 { return int64(in.uint(size) & math.MaxInt64) }

// count decodes a token count for a limit: mostly in [0, limit], with codes
// for just above it, negative and the limit itself.
func (in *fuzzInput) count(limit int64) int64 {
	switch v := in.byte(); v {
	case 255:
		return limit + 1
	case 254:
		return -1
	case 253:
		return limit
	case 252:
		return in.int63(2) % (limit + 1)
	default:
		return int64(v) % (limit + 1)
	}
}

// fuzzStep decodes a time step from the op byte's upper bits: zero, tiny,
// around a cost, large, or backwards.
func (in *fuzzInput) step(sel byte, scale int64) int64 {
	switch sel % 8 {
	case 0:
		return 0
	case 1:
		return 1
	case 2:
		return int64(in.byte())
	case 3:
		return in.int63(2)
	case 4:
		return in.int63(8) % (2*scale + 2)
	case 5:
		return -int64(in.byte()) // backwards
	case 6:
		return -in.int63(8) % (scale + 2) // far backwards
	default:
		return in.int63(8) % (1 << 50)
	}
}

// FuzzBucketOps decodes a bucket configuration and a sequence of takes, checks,
// TakeLeavings and returns at times that may go backwards, and checks after
// every op: no panic, Remaining in [0, burst], RetryAfter zero iff allowed and
// Never iff impossible (or saturated at a negative now), the TAT never more than τ ahead of the latest time
// seen, never more tokens at an earlier time than at the latest, and — while
// time has not gone backwards — no grant the exact rational bucket would
// refuse.
func FuzzBucketOps(f *testing.F) {
	f.Add([]byte{0, 3, 0, 10, 0, 5, 1, 3, 3, 5, 2, 1, 8, 1, 17, 5})
	f.Add([]byte{3, 0, 0, 2, 255, 3, 3, 253, 3, 254, 5, 2, 29, 1, 3, 1})                  // huge rate
	f.Add([]byte{0, 2, 0, 3, 0, 3, 3, 2, 10, 1, 2, 3, 2})                                 // 2 per 3ns, burst 3
	f.Add([]byte{1, 0x10, 0x27, 2, 2, 0, 0xe8, 0x03, 4, 100, 44, 1, 0, 52, 9, 99, 5, 12}) // backwards
	f.Add([]byte{0, 1, 3, 0, 0, 1, 2, 1, 16, 0, 0, 23, 1, 7, 3, 4})
	f.Fuzz(func(t *testing.T, data []byte) {
		in := &fuzzInput{data: data}
		var rate int64
		switch in.byte() % 4 {
		case 0:
			rate = 1 + int64(in.byte()%16)
		case 1:
			rate = 1 + in.int63(2)
		case 2:
			rate = 1 + in.int63(8)%math.MaxInt64
		default:
			rate = math.MaxInt64
		}
		var period time.Duration
		switch in.byte() % 4 {
		case 0:
			period = time.Duration(in.byte() % 16) // 0 is invalid
		case 1:
			period = time.Duration(1 + in.int63(4))
		case 2:
			period = time.Second
		default:
			period = time.Duration(1 + in.int63(8)%int64(time.Hour))
		}
		var burst int64
		switch in.byte() % 4 {
		case 0:
			burst = int64(in.byte() % 8)
		case 1, 2:
			burst = in.int63(2) % 1001
		default:
			burst = int64(in.uint(8)) // may be negative or refill too long
		}
		b, err := NewTokenBucket(rate, period, burst)
		if err != nil {
			if !errors.Is(err, ErrInvalidLimit) {
				t.Fatalf("NewTokenBucket(%d, %d, %d) error %v does not wrap ErrInvalidLimit", rate, period, burst, err)
			}
			return
		}
		tau := int64(b.Cost(burst))
		now := in.int63(4)
		latest := now
		ref := newRefBucket(rate, int64(period), burst, now)
		monotone := true
		var s BucketState
		for op := 0; in.more() && op < 500; op++ {
			sel := in.byte()
			now = max(min(addSat(now, in.step(sel>>3, tau)), 1<<62), -(1 << 62))
			if now < latest {
				monotone = false
			}
			latest = max(latest, now)
			if monotone {
				ref.at(now)
			}
			n := in.count(burst)
			var d Decision
			keep := int64(0)
			switch sel % 4 {
			case 0:
				d = b.Take(&s, now, n)
			case 1:
				d = b.Check(s, now, n)
			case 2:
				keep = in.count(burst)
				d = b.TakeLeaving(&s, now, n, keep)
			default:
				b.Return(&s, now, n)
				if monotone && n > 0 {
					ref.give(n)
				}
			}
			if sel%4 != 3 {
				valid := n >= 0 && keep >= 0 && n <= burst && keep <= burst-n
				if d.Remaining < 0 || d.Remaining > burst {
					t.Fatalf("op %d: Remaining %d outside [0, %d]", op, d.Remaining, burst)
				}
				if d.Allowed != (d.RetryAfter == 0) || d.ResetAfter < 0 {
					t.Fatalf("op %d: inconsistent decision %+v", op, d)
				}
				// A valid request waits less than Never, unless now is so far
				// before the TAT (now < 0 here) that the wait overflows int64
				// and saturates at Never.
				if !valid && d.RetryAfter != Never || valid && d.RetryAfter == Never && now >= 0 {
					t.Fatalf("op %d: n=%d keep=%d burst=%d got %+v", op, n, keep, burst, d)
				}
				if monotone && d.Allowed {
					if !ref.has(n + keep) {
						t.Fatalf("op %d: allowed n=%d keep=%d at exact level %s", op, n, keep, ref.level.FloatString(6))
					}
					if sel%4 != 1 {
						ref.take(n)
					}
				}
			}
			if s.TAT > latest+tau {
				t.Fatalf("op %d: TAT %d more than τ=%d ahead of the latest time %d", op, s.TAT, tau, latest)
			}
			if a, l := b.Available(s, now), b.Available(s, latest); a > l || a < 0 || l > burst {
				t.Fatalf("op %d: Available %d at %d, %d at latest %d (burst %d)", op, a, now, l, latest, burst)
			}
			if monotone && !ref.has(b.Available(s, now)) {
				t.Fatalf("op %d: Available %d above the exact level %s", op, b.Available(s, now), ref.level.FloatString(6))
			}
		}
	})
}

// FuzzWindowOps decodes a small sliding window and a sequence of instant and
// span takes, checks and returns at times that may go backwards, and checks
// after every op: no panic, Remaining in [0, limit], RetryAfter zero iff
// allowed and Never iff impossible, counters of the right size, and the
// reference check of TestWindowMatchesReference: no real window ever
// intersects grants worth more than the limit. A take at an earlier time than
// the window already acted on counts as taken at that later time, as documented.
func FuzzWindowOps(f *testing.F) {
	f.Add([]byte{3, 9, 9, 0, 1, 8, 1, 16, 2, 1, 0, 3, 60, 1})
	f.Add([]byte{2, 0, 99, 63, 1, 2, 2, 5, 1, 10, 3, 0, 0, 0, 4, 1, 2})
	f.Add([]byte{5, 0, 0, 0, 1, 5, 2, 3, 3, 40, 2, 3, 1, 1, 0, 9, 1})     // 1ns window
	f.Add([]byte{4, 0, 199, 7, 1, 4, 9, 250, 2, 5, 42, 9, 2, 0, 1, 6})    // backwards
	f.Add([]byte{20, 0, 120, 11, 1, 2, 12, 100, 2, 6, 90, 3, 5, 0, 0, 7}) // spans and returns
	f.Fuzz(func(t *testing.T, data []byte) {
		in := &fuzzInput{data: data}
		limit := int64(in.byte() % 24)
		if in.byte()%4 == 3 {
			limit = in.int63(2) % 1001
		}
		window := time.Duration(1 + in.byte()%200)
		slots := int(in.byte()%66) - 1 // -1 and 65 are invalid
		w, err := NewSlidingWindow(limit, window, slots)
		if err != nil {
			if !errors.Is(err, ErrInvalidLimit) {
				t.Fatalf("NewSlidingWindow(%d, %d, %d) error %v does not wrap ErrInvalidLimit", limit, window, slots, err)
			}
			return
		}
		W := int64(window)
		ref := &refWindow{window: W, limit: limit}
		var s WindowState
		var leases []lease
		now := in.int63(2)
		acted := int64(0) // latest time the state was changed at
		for op := 0; in.more() && op < 300; op++ {
			sel := in.byte()
			now = max(min(now+in.step(sel>>3, W), 1<<50), -(1 << 50))
			eff := max(now, acted, 0) // when the window counts this op as happening
			ref.prune(eff)
			if sel%4 == 3 && len(leases) > 0 {
				j := int(in.byte()) % len(leases)
				l := leases[j]
				leases = append(leases[:j], leases[j+1:]...)
				unused := int64(in.byte()) % (l.granted + 1)
				w.Return(&s, now, l.span, l.granted, unused)
				acted = eff
				l.ref.n -= unused
				l.ref.until = min(l.ref.until, max(eff, l.ref.from))
				continue
			}
			n := in.count(limit)
			until := now
			if sel%4 >= 2 {
				until = now + int64(in.byte())%(2*W+1)
			}
			cand := &refGrant{from: eff, until: max(min(max(until, now), now+W), eff), n: n}
			before := cloneWindow(s)
			var d Decision
			var sp Span
			if sel%4 == 1 {
				d = w.CheckSpan(&s, now, until, n)
			} else {
				d, sp = w.TakeSpan(&s, now, until, n)
			}
			if d.Remaining < 0 || d.Remaining > limit {
				t.Fatalf("op %d: Remaining %d outside [0, %d]", op, d.Remaining, limit)
			}
			if d.Allowed != (d.RetryAfter == 0) || d.ResetAfter < 0 {
				t.Fatalf("op %d: inconsistent decision %+v", op, d)
			}
			if (d.RetryAfter == Never) != (n < 0 || n > limit) {
				t.Fatalf("op %d: n=%d limit=%d got %+v", op, n, limit, d)
			}
			if (sel%4 == 1 || !d.Allowed || n == 0) && !sameWindow(s, before) {
				t.Fatalf("op %d: %+v changed the state", op, d)
			}
			if d.Allowed && n > 0 {
				if most, a := ref.worst(cand); most > limit {
					t.Fatalf("op %d: grant %+v puts %d tokens in real window [%d, %d), limit %d", op, *cand, most, a, a+W, limit)
				}
				if sel%4 != 1 {
					acted = eff
					ref.grants = append(ref.grants, cand)
					leases = append(leases, lease{ref: cand, span: sp, granted: n})
				}
			}
			if s.Counts != nil && len(s.Counts) != 2*(2*w.Slots()+4) {
				t.Fatalf("op %d: %d counters, want %d", op, len(s.Counts), 2*(2*w.Slots()+4))
			}
			if w.Empty(&s, eff) && !emptyAhead(ref, eff) {
				t.Fatalf("op %d: Empty at %d, but a grant still counts", op, eff)
			}
		}
	})
}

// FuzzBucketDebt decodes a bucket configuration and a sequence of takes,
// charges (with debt caps that may be negative), lowers, blocks and returns
// at times that may go backwards, and checks after every op: no panic; a
// charge charges 0 to n tokens, moves the TAT by exactly Cost(charged) and
// never past now + ⌊(Burst+maxDebt)·Period/Rate⌋; nothing but a return moves
// the TAT back; Available is Level clamped at 0; and, while time has not gone
// backwards, the rational reference agrees: no grant above the exact level,
// no charge below -maxDebt, no lower or block leaving more than it allows.
func FuzzBucketDebt(f *testing.F) {
	f.Add([]byte{0, 3, 0, 10, 0, 5, 1, 3, 3, 5, 2, 1, 8, 1, 17, 5, 4, 9, 12, 3})
	f.Add([]byte{3, 0, 0, 2, 255, 3, 3, 253, 3, 254, 5, 2, 29, 1, 3, 1, 6, 6, 6})             // huge rate
	f.Add([]byte{1, 0x10, 0x27, 2, 2, 0, 0xe8, 0x03, 4, 100, 44, 1, 0, 52, 9, 99, 5, 12, 45}) // backwards
	f.Add([]byte{0, 1, 3, 0, 0, 1, 2, 1, 16, 0, 0, 23, 1, 7, 3, 4, 2, 2, 2, 2, 3, 3})
	f.Fuzz(func(t *testing.T, data []byte) {
		in := &fuzzInput{data: data}
		var rate int64
		switch in.byte() % 4 {
		case 0:
			rate = 1 + int64(in.byte()%16)
		case 1:
			rate = 1 + in.int63(2)
		case 2:
			rate = 1 + in.int63(8)%math.MaxInt64
		default:
			rate = math.MaxInt64
		}
		var period time.Duration
		switch in.byte() % 3 {
		case 0:
			period = time.Duration(1 + in.byte()%16)
		case 1:
			period = time.Duration(1 + in.int63(4))
		default:
			period = time.Second
		}
		burst := int64(in.byte() % 8)
		if in.byte()%2 == 0 {
			burst = in.int63(2) % 1001
		}
		b, err := NewTokenBucket(rate, period, burst)
		if err != nil {
			return // the configuration checks are FuzzBucketOps's
		}
		tau := int64(b.Cost(burst))
		now := in.int63(4)
		latest := now
		ref := newRefBucket(rate, int64(period), burst, now)
		monotone := true
		var s BucketState
		for op := 0; in.more() && op < 500; op++ {
			sel := in.byte()
			now = max(min(addSat(now, in.step(sel>>3, tau)), 1<<62), -(1 << 62))
			if now < latest {
				monotone = false
			}
			latest = max(latest, now)
			if monotone {
				ref.at(now)
			}
			before := s
			n := in.count(burst)
			switch sel % 8 {
			case 0, 1: // take
				d := b.Take(&s, now, n)
				if monotone && d.Allowed && n > 0 {
					if !ref.has(n) {
						t.Fatalf("op %d: took %d at exact level %s", op, n, ref.level.FloatString(6))
					}
					ref.take(n)
				}
			case 2, 3: // charge
				if sel&0x80 != 0 {
					n = in.int63(8) // far beyond any cap
				}
				maxDebt := in.count(4*burst+4) - int64(in.byte()%4)*burst
				got := b.Charge(&s, now, n, maxDebt)
				if got < 0 || got > max(n, 0) {
					t.Fatalf("op %d: Charge(%d, maxDebt %d) = %d", op, n, maxDebt, got)
				}
				if got == 0 && s != before {
					t.Fatalf("op %d: Charge(%d) charged nothing but moved the TAT from %d to %d", op, n, before.TAT, s.TAT)
				}
				if got > 0 {
					if s.TAT != max(before.TAT, now)+int64(b.Cost(got)) {
						t.Fatalf("op %d: Charge of %d moved the TAT from %d to %d", op, got, before.TAT, s.TAT)
					}
					if lim := addSat(now, mulDivFloor(max(addSat(burst, maxDebt), 0), int64(period), rate)); s.TAT > lim {
						t.Fatalf("op %d: Charge(maxDebt %d) left the TAT at %d, past %d", op, maxDebt, s.TAT, lim)
					}
				}
				if monotone {
					ref.take(got)
					if got > 0 && ref.level.Cmp(big.NewRat(-maxDebt, 1)) < 0 {
						t.Fatalf("op %d: Charge(maxDebt %d) of %d took the exact level to %s", op, maxDebt, got, ref.level.FloatString(6))
					}
				}
			case 4: // lower
				level := burst - in.count(2*burst+2)
				b.Lower(&s, now, level)
				if monotone {
					if l := big.NewRat(level, 1); ref.level.Cmp(l) > 0 {
						ref.level.Set(l)
					}
				}
			case 5: // block
				until := now + in.step(sel>>3, tau)
				b.BlockUntil(&s, until)
				if monotone && until >= now {
					l := new(big.Rat).SetFrac(new(big.Int).Mul(big.NewInt(now-until), big.NewInt(rate)), big.NewInt(int64(period)))
					if ref.level.Cmp(l) > 0 {
						ref.level.Set(l)
					}
				}
			default: // return
				b.Return(&s, now, n)
				if monotone && n > 0 {
					ref.give(n)
				}
			}
			if sel%8 < 6 && s.TAT < before.TAT {
				t.Fatalf("op %d (%d): the TAT moved back from %d to %d", op, sel%8, before.TAT, s.TAT)
			}
			level := b.Level(s, now)
			if level > burst || b.Available(s, now) != max(level, 0) {
				t.Fatalf("op %d: Level %d, Available %d (burst %d)", op, level, b.Available(s, now), burst)
			}
			if a, l := b.Available(s, now), b.Available(s, latest); a > l {
				t.Fatalf("op %d: Available %d at %d, more than %d at the latest time %d", op, a, now, l, latest)
			}
			if monotone && !ref.has(level) && level != burst-math.MaxInt64 {
				t.Fatalf("op %d: Level %d above the exact level %s", op, level, ref.level.FloatString(6))
			}
		}
	})
}
