package client

import (
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/leasehold/leasehold/transport"
)

func TestValidity(t *testing.T) {
	tests := []struct {
		name string
		ttl  time.Duration
		rho  float64
		want int64
	}{
		{name: "2s at 1e-3", ttl: 2 * time.Second, rho: 1e-3, want: 1996003996},
		{name: "1m at 1e-3", ttl: time.Minute, rho: 1e-3, want: 59880119880},
		{name: "no drift", ttl: time.Second, rho: 0, want: int64(time.Second)},
		{name: "zero ttl", ttl: 0, rho: 1e-3, want: 0},
		{name: "negative ttl", ttl: -time.Second, rho: 1e-3, want: 0},
		{name: "1ns", ttl: 1, rho: 1e-3, want: 0},
		{name: "10% drift", ttl: 11 * time.Second, rho: 0.1, want: 9 * int64(time.Second)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := validity(tt.ttl, tt.rho)
			if got != tt.want {
				t.Errorf("validity(%v, %v) = %d, want %d", tt.ttl, tt.rho, got, tt.want)
			}
			// Never longer than the safe bound, computed exactly.
			if tt.ttl > 0 {
				exact := float64(tt.ttl) * (1 - tt.rho) / (1 + tt.rho)
				if float64(got) > exact || float64(got) < exact-1 {
					t.Errorf("validity(%v, %v) = %d, outside [%v-1, %v]", tt.ttl, tt.rho, got, exact, exact)
				}
			}
		})
	}
}

func TestLeaseStripes(t *testing.T) {
	tests := []struct {
		granted   int64
		maxStripe int
		want      int // stripes
	}{
		{granted: 10, maxStripe: 8, want: 1},
		{granted: 127, maxStripe: 8, want: 1},
		{granted: 128, maxStripe: 8, want: 2},
		{granted: 64 * 7, maxStripe: 8, want: 4},
		{granted: 1 << 40, maxStripe: 8, want: 8},
		{granted: 1 << 40, maxStripe: 1, want: 1},
		{granted: 0, maxStripe: 8, want: 1},
	}
	for _, tt := range tests {
		ls := newLease(1, tt.granted, 0, 100, tt.maxStripe)
		if len(ls.stripes) != tt.want || ls.mask != uint64(tt.want-1) {
			t.Errorf("newLease(%d, max %d): %d stripes, mask %d; want %d", tt.granted, tt.maxStripe, len(ls.stripes), ls.mask, tt.want)
		}
		if got := ls.left(); got != tt.granted {
			t.Errorf("newLease(%d): left = %d", tt.granted, got)
		}
		var lo, hi int64 = math.MaxInt64, 0
		for i := range ls.stripes {
			n := ls.stripes[i].tokens.Load()
			lo, hi = min(lo, n), max(hi, n)
		}
		if hi-lo > 1 {
			t.Errorf("newLease(%d): stripes hold %d to %d tokens, want an even split", tt.granted, lo, hi)
		}
	}
	for procs, want := range map[int]int{1: 1, 2: 8, 3: 16, 8: 16, 64: maxStripes} {
		if got := stripeCount(procs); got != want {
			t.Errorf("stripeCount(%d) = %d, want %d", procs, got, want)
		}
	}
}

func TestLeaseSpendAndKill(t *testing.T) {
	ls := newLease(1, 10, 0, 100, 1)
	s := ls.stripe()
	if !s.take(4) {
		t.Fatal("take(4) of 10 = false")
	}
	if s.take(7) {
		t.Fatal("take(7) of 6 = true")
	}
	if got := s.takeUpTo(7); got != 6 {
		t.Fatalf("takeUpTo(7) of 6 = %d, want 6", got)
	}
	if got := ls.usable(99); got != 0 {
		t.Fatalf("usable when empty = %d", got)
	}
	ls = newLease(2, 1000, 0, 100, 4)
	for range 3 {
		ls.stripe().take(1)
	}
	if got := ls.usable(99); got != 997 {
		t.Fatalf("usable(99) = %d, want 997", got)
	}
	if got := ls.usable(100); got != 0 {
		t.Fatalf("usable at the deadline = %d, want 0", got)
	}
	if got := ls.kill(); got != 997 {
		t.Fatalf("kill = %d, want 997 unused", got)
	}
	if got := ls.kill(); got != 0 {
		t.Fatalf("second kill = %d, want 0", got)
	}
	if ls.stripe().take(1) {
		t.Fatal("take from a dead lease = true")
	}
}

func TestSeqTracker(t *testing.T) {
	var s seqTracker
	if got := s.low(); got != 1 {
		t.Fatalf("low of a new tracker = %d, want 1", got)
	}
	a, b, c := s.begin(), s.begin(), s.begin()
	if a != 1 || b != 2 || c != 3 {
		t.Fatalf("seqs = %d %d %d, want 1 2 3", a, b, c)
	}
	s.end(b)
	if got := s.low(); got != 1 {
		t.Errorf("low with 1 and 3 in flight = %d, want 1", got)
	}
	s.end(a)
	if got := s.low(); got != 3 {
		t.Errorf("low with 3 in flight = %d, want 3", got)
	}
	s.end(c)
	s.end(c) // twice is harmless
	if got := s.low(); got != 4 {
		t.Errorf("low with nothing in flight = %d, want 4", got)
	}
}

func TestJitter(t *testing.T) {
	for attempt := range 40 {
		ceiling := maxBackoff
		if attempt < 16 {
			ceiling = min(maxBackoff, baseBackoff<<attempt)
		}
		for range 100 {
			if d := jitter(attempt); d < 0 || d > ceiling {
				t.Fatalf("jitter(%d) = %v, want in [0, %v]", attempt, d, ceiling)
			}
		}
	}
}

// Config validation reports every problem at once.
func TestConfigValidate(t *testing.T) {
	c := defaultConfig()
	if err := c.validate(); !errors.Is(err, ErrNoTransportSecurity) {
		t.Fatalf("default config: %v; want ErrNoTransportSecurity (no security chosen)", err)
	}
	WithInsecure()(&c)
	if err := c.validate(); err != nil {
		t.Fatalf("default config WithInsecure: %v", err)
	}
	for _, o := range []Option{
		WithLeaseTTL(2 * time.Minute),
		WithClockDrift(math.NaN()),
		WithFailurePolicy(FallbackShare{Clients: 0, For: -1}),
		WithLogger(nil),
		WithClientID(make([]byte, 65)),
		WithTargetPeriod(0),
		WithRequestTimeout(-1),
	} {
		o(&c)
	}
	err := c.validate()
	if err == nil {
		t.Fatal("validate = nil, want errors")
	}
	for _, want := range []string{"lease TTL", "clock drift", "clients 0", "duration -1ns", "logger", "client id", "target period", "request timeout"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("validate error %q does not mention %q", err, want)
		}
	}
}

func TestLimitProto(t *testing.T) {
	p := Limit{Algorithm: SlidingWindow, Rate: 5, Per: time.Minute, Slots: 12, MaxLease: 3 * time.Second}.proto()
	if p.GetAlgorithm().String() != "SLIDING_WINDOW" || p.GetLimit() != 5 || p.GetPeriodNs() != int64(time.Minute) ||
		p.GetSlots() != 12 || p.GetMaxLeaseNs() != int64(3*time.Second) {
		t.Errorf("proto = %v", p)
	}
	if err := transport.ValidateLimit("limit", p); err != nil {
		t.Errorf("ValidateLimit: %v", err)
	}
	p = Limit{Rate: 5, Per: time.Second}.proto()
	if p.GetAlgorithm().String() != "TOKEN_BUCKET" {
		t.Errorf("zero Algorithm = %v, want TOKEN_BUCKET", p.GetAlgorithm())
	}
	err := Limit{Rate: 5, Per: time.Second, Slots: 1 << 40}.check("k")
	var inv *transport.InvalidError
	if !errors.As(err, &inv) || inv.Field != "limit.slots" {
		t.Errorf("check with huge Slots = %v, want an InvalidError for limit.slots", err)
	}
}

func TestEnumStrings(t *testing.T) {
	for v, want := range map[interface{ String() string }]string{
		StateLeased: "leased", StateCentral: "central", StateFallback: "fallback",
		StateInvalid: "invalid", StateClosed: "closed", State(0): "State(0)",
		TokenBucket: "token-bucket", SlidingWindow: "sliding-window",
		FailClosed: "fail-closed", FailOpen: "fail-open",
	} {
		if got := v.String(); got != want {
			t.Errorf("String() = %q, want %q", got, want)
		}
	}
}
