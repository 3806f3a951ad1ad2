package limiter

import (
	"errors"
	"math"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// windowStep is one row of a sliding-window step table. A take or check asks
// for n tokens spent at any instant of [at, until] (until 0: the instant at)
// and expects want; a return gives back the grant of the earlier take step
// named grant, with unused of its tokens never spent. After every step,
// Empty(s, at) must be empty.
type windowStep struct {
	name   string
	at     int64
	op     op
	until  int64
	n      int64
	want   Decision
	grant  string
	unused int64
	empty  bool
}

// t0 is a log time far enough from 0 that a window's first slots play no part:
// with 100ms slots it is slot 1000.
const t0 = 100 * sec

func runWindowSteps(t *testing.T, w SlidingWindow, steps []windowStep) {
	t.Helper()
	var s WindowState
	type held struct {
		span    Span
		granted int64
	}
	grants := map[string]held{}
	for i, step := range steps {
		before := cloneWindow(s)
		until := step.until
		if until == 0 {
			until = step.at
		}
		var got Decision
		switch step.op {
		case opTake:
			var sp Span
			got, sp = w.TakeSpan(&s, step.at, until, step.n)
			grants[step.name] = held{span: sp, granted: step.n}
		case opCheck:
			got = w.CheckSpan(&s, step.at, until, step.n)
		case opReturn:
			g, ok := grants[step.grant]
			if !ok {
				t.Fatalf("step %d %q returns unknown grant %q", i, step.name, step.grant)
			}
			w.Return(&s, step.at, g.span, g.granted, step.unused)
		}
		if step.op != opReturn {
			if diff := cmp.Diff(step.want, got); diff != "" {
				t.Errorf("step %d %q: %v(at=%d, until=%d, n=%d) decision mismatch (-want +got):\n%s",
					i, step.name, step.op, step.at, until, step.n, diff)
			}
			if (step.op == opCheck || !got.Allowed) && !sameWindow(s, before) {
				t.Errorf("step %d %q: %v changed the state", i, step.name, step.op)
			}
		}
		if e := w.Empty(&s, step.at); e != step.empty {
			t.Errorf("step %d %q: Empty = %v, want %v", i, step.name, e, step.empty)
		}
	}
}

func mustWindow(t testing.TB, limit int64, window time.Duration, slots int) SlidingWindow {
	t.Helper()
	w, err := NewSlidingWindow(limit, window, slots)
	if err != nil {
		t.Fatalf("NewSlidingWindow(%d, %v, %d): %v", limit, window, slots, err)
	}
	return w
}

func TestWindowSteps(t *testing.T) {
	tests := []struct {
		name   string
		limit  int64
		window time.Duration
		slots  int
		steps  []windowStep
	}{
		{
			// 3 per second in 10 slots of g = 100ms. Slot k is [k·g, (k+1)·g);
			// t0 is slot 1000. A slot window [j-10, j] is 11 slots, 1.1s. An
			// instant take in slot k lies in windows j = k..k+10, so it counts
			// until slot k+11 begins.
			name: "limit reached, then the old slot leaves", limit: 3, window: time.Second, slots: 10,
			steps: []windowStep{
				{name: "1 at slot 1000", at: t0, op: opTake, n: 1,
					want: Decision{Allowed: true, Remaining: 2, ResetAfter: 1100 * time.Millisecond}},
				// Counts until slot 1013 begins, 101.3s-100.25s = 1.05s.
				{name: "2 at slot 1002", at: t0 + 250*ms, op: opTake, n: 2,
					want: Decision{Allowed: true, Remaining: 0, ResetAfter: 1050 * time.Millisecond}},
				// Windows 1005..1010 hold 3. Windows from 1011 on drop slot
				// 1000 and hold 2: a take at slot 1011 (101.1s) fits, 0.6s on.
				{name: "full at slot 1005", at: t0 + 500*ms, op: opTake, n: 1,
					want: Decision{RetryAfter: 600 * time.Millisecond, ResetAfter: 800 * time.Millisecond}},
				{name: "1ns before slot 1011", at: t0 + 1100*ms - 1, op: opCheck, n: 1,
					want: Decision{RetryAfter: 1, ResetAfter: 200*time.Millisecond + 1}},
				// Lasts until slot 1022, 1.1s.
				{name: "at slot 1011", at: t0 + 1100*ms, op: opTake, n: 1,
					want: Decision{Allowed: true, Remaining: 0, ResetAfter: 1100 * time.Millisecond}},
				// Windows 1013..1023 hold only the slot-1011 grant.
				{name: "at slot 1013", at: t0 + 1300*ms, op: opTake, n: 1,
					want: Decision{Allowed: true, Remaining: 1, ResetAfter: 1100 * time.Millisecond}},
				// The last grant (slot 1013) counts until slot 1024, 102.4s.
				{name: "1ns before empty", at: t0 + 2400*ms - 1, op: opCheck, n: 0,
					want: Decision{Allowed: true, Remaining: 2, ResetAfter: 1}},
				{name: "empty", at: t0 + 2400*ms, op: opCheck, n: 0,
					want: Decision{Allowed: true, Remaining: 3}, empty: true},
				{name: "much later", at: t0 + 1000*sec, op: opCheck, n: 3,
					want: Decision{Allowed: true, ResetAfter: 1100 * time.Millisecond}, empty: true},
			},
		},
		{
			// A lease [t0, t0+350ms] covers slots 1000..1003 and counts once in
			// each slot window it overlaps (j = 1000..1013), not once per slot.
			name: "spans count once per slot window", limit: 3, window: time.Second, slots: 10,
			steps: []windowStep{
				{name: "lease of 2", at: t0, until: t0 + 350*ms, op: opTake, n: 2,
					want: Decision{Allowed: true, Remaining: 1, ResetAfter: 1400 * time.Millisecond}},
				{name: "1 at slot 1003", at: t0 + 350*ms, op: opTake, n: 1,
					want: Decision{Allowed: true, Remaining: 0, ResetAfter: 1050 * time.Millisecond}},
				// Window 1013 still holds both; window 1014 neither.
				{name: "full at slot 1013", at: t0 + 1350*ms, op: opTake, n: 1,
					want: Decision{RetryAfter: 50 * time.Millisecond, ResetAfter: 50 * time.Millisecond}},
				{name: "at slot 1014", at: t0 + 1400*ms, op: opTake, n: 1,
					want: Decision{Allowed: true, Remaining: 2, ResetAfter: 1100 * time.Millisecond}},
				// until is clamped to now+1s, slot 1024: the lease counts until
				// slot 1035, 2.1s on (unclamped it would be slot 1090).
				{name: "lease beyond the window is clamped", at: t0 + 1400*ms, until: t0 + 9*sec, op: opTake, n: 1,
					want: Decision{Allowed: true, Remaining: 1, ResetAfter: 2100 * time.Millisecond}},
				// until before now is raised to now.
				{name: "until before now", at: t0 + 1400*ms, until: t0, op: opCheck, n: 1,
					want: Decision{Allowed: true, Remaining: 0, ResetAfter: 2100 * time.Millisecond}},
			},
		},
		{
			// A lease of 4 over slots 1000..1009 fills every window 1000..1019.
			name: "return unused tokens and release early", limit: 4, window: time.Second, slots: 10,
			steps: []windowStep{
				{name: "lease", at: t0, until: t0 + 900*ms, op: opTake, n: 4,
					want: Decision{Allowed: true, Remaining: 0, ResetAfter: 2 * time.Second}},
				{name: "full while the lease lasts", at: t0 + 200*ms, op: opCheck, n: 1,
					want: Decision{RetryAfter: 1800 * time.Millisecond, ResetAfter: 1800 * time.Millisecond}},
				// 1 unused leaves; the 3 used end at slot 1002, so they count in
				// windows up to 1012 only.
				{name: "return 1 unused at slot 1002", at: t0 + 200*ms, op: opReturn, grant: "lease", unused: 1},
				{name: "one fits", at: t0 + 200*ms, op: opCheck, n: 1,
					want: Decision{Allowed: true, Remaining: 0, ResetAfter: 1100 * time.Millisecond}},
				{name: "two fit from slot 1013", at: t0 + 200*ms, op: opCheck, n: 2,
					want: Decision{Remaining: 1, RetryAfter: 1100 * time.Millisecond, ResetAfter: 1100 * time.Millisecond}},
				{name: "1ns before slot 1013", at: t0 + 1300*ms - 1, op: opCheck, n: 2,
					want: Decision{Remaining: 1, RetryAfter: 1, ResetAfter: 1}},
				{name: "empty at slot 1013", at: t0 + 1300*ms, op: opCheck, n: 4,
					want: Decision{Allowed: true, ResetAfter: 1100 * time.Millisecond}, empty: true},
			},
		},
		{
			name: "return everything unused", limit: 4, window: time.Second, slots: 10,
			steps: []windowStep{
				{name: "lease", at: t0, until: t0 + 500*ms, op: opTake, n: 3,
					want: Decision{Allowed: true, Remaining: 1, ResetAfter: 1600 * time.Millisecond}},
				{name: "bad return: unused above granted", at: t0, op: opReturn, grant: "lease", unused: 4},
				{name: "bad return: negative unused", at: t0, op: opReturn, grant: "lease", unused: -1},
				{name: "still held", at: t0, op: opCheck, n: 2,
					want: Decision{Remaining: 1, RetryAfter: 1600 * time.Millisecond, ResetAfter: 1600 * time.Millisecond}},
				{name: "return all 3", at: t0 + 100*ms, op: opReturn, grant: "lease", unused: 3, empty: true},
				{name: "all 4 free", at: t0 + 100*ms, op: opCheck, n: 4,
					want: Decision{Allowed: true, ResetAfter: 1100 * time.Millisecond}, empty: true},
			},
		},
		{
			// A spent instant grant returned later changes nothing.
			name: "return of a spent instant grant", limit: 2, window: time.Second, slots: 10,
			steps: []windowStep{
				{name: "take 2", at: t0, op: opTake, n: 2,
					want: Decision{Allowed: true, ResetAfter: 1100 * time.Millisecond}},
				{name: "return with none unused", at: t0 + 500*ms, op: opReturn, grant: "take 2", unused: 0},
				{name: "still full", at: t0 + 500*ms, op: opCheck, n: 1,
					want: Decision{RetryAfter: 600 * time.Millisecond, ResetAfter: 600 * time.Millisecond}},
				// Long after the grant left the rings, a return is ignored.
				{name: "stale return", at: t0 + 100*sec, op: opReturn, grant: "take 2", unused: 2, empty: true},
				{name: "nothing counted", at: t0 + 100*sec, op: opCheck, n: 2,
					want: Decision{Allowed: true, ResetAfter: 1100 * time.Millisecond}, empty: true},
			},
		},
		{
			name: "n above the limit and negative n", limit: 5, window: time.Second, slots: 10,
			steps: []windowStep{
				{name: "6 of 5", at: t0, op: opTake, n: 6,
					want: Decision{Remaining: 5, RetryAfter: Never}, empty: true},
				{name: "max int", at: t0, op: opTake, n: math.MaxInt64,
					want: Decision{Remaining: 5, RetryAfter: Never}, empty: true},
				{name: "-1", at: t0, op: opTake, n: -1,
					want: Decision{Remaining: 5, RetryAfter: Never}, empty: true},
				{name: "2", at: t0, op: opTake, n: 2,
					want: Decision{Allowed: true, Remaining: 3, ResetAfter: 1100 * time.Millisecond}},
				{name: "6 after 2", at: t0, op: opTake, n: 6,
					want: Decision{Remaining: 3, RetryAfter: Never, ResetAfter: 1100 * time.Millisecond}},
				{name: "0 is always allowed", at: t0, op: opTake, n: 0,
					want: Decision{Allowed: true, Remaining: 3, ResetAfter: 1100 * time.Millisecond}},
			},
		},
		{
			name: "limit 0 admits nothing", limit: 0, window: time.Second, slots: 10,
			steps: []windowStep{
				{name: "1", at: t0, op: opTake, n: 1,
					want: Decision{RetryAfter: Never}, empty: true},
				{name: "0", at: t0, op: opTake, n: 0,
					want: Decision{Allowed: true}, empty: true},
			},
		},
		{
			// A 1ns window has one 1ns slot; slot windows are 2 slots, 2ns.
			name: "1ns window", limit: 2, window: 1, slots: 10,
			steps: []windowStep{
				{name: "2 at 1000", at: 1000, op: opTake, n: 2,
					want: Decision{Allowed: true, ResetAfter: 2}},
				{name: "1 more at 1000", at: 1000, op: opTake, n: 1,
					want: Decision{RetryAfter: 2, ResetAfter: 2}},
				{name: "1 at 1001", at: 1001, op: opTake, n: 1,
					want: Decision{RetryAfter: 1, ResetAfter: 1}},
				{name: "2 at 1002", at: 1002, op: opTake, n: 2,
					want: Decision{Allowed: true, ResetAfter: 2}},
			},
		},
		{
			// 64 slots in 5ns are cut to 5 slots of 1ns: a grant counts for 6ns.
			name: "slots above the window are clamped", limit: 1, window: 5, slots: 64,
			steps: []windowStep{
				{name: "1 at 100", at: 100, op: opTake, n: 1,
					want: Decision{Allowed: true, ResetAfter: 6}},
				{name: "1 at 100 again", at: 100, op: opTake, n: 1,
					want: Decision{RetryAfter: 6, ResetAfter: 6}},
				{name: "1 at 105", at: 105, op: opTake, n: 1,
					want: Decision{RetryAfter: 1, ResetAfter: 1}},
				{name: "1 at 106", at: 106, op: opTake, n: 1,
					want: Decision{Allowed: true, ResetAfter: 6}},
			},
		},
		{
			// A take at an earlier time is counted at the latest slot seen,
			// 1005, so it must wait for slot 1016 like one at t0+500ms would.
			name: "time going backwards is clamped", limit: 2, window: time.Second, slots: 10,
			steps: []windowStep{
				{name: "2 at slot 1005", at: t0 + 500*ms, op: opTake, n: 2,
					want: Decision{Allowed: true, ResetAfter: 1100 * time.Millisecond}},
				{name: "1 at slot 1000", at: t0, op: opTake, n: 1,
					want: Decision{RetryAfter: 1600 * time.Millisecond, ResetAfter: 1600 * time.Millisecond}},
				{name: "1ns before slot 1016", at: t0 + 1600*ms - 1, op: opTake, n: 1,
					want: Decision{RetryAfter: 1, ResetAfter: 1}},
				{name: "slot 1016", at: t0 + 1600*ms, op: opTake, n: 1,
					want: Decision{Allowed: true, Remaining: 1, ResetAfter: 1100 * time.Millisecond}},
				// Back at slot 1005 the take counts at 1016, so it lasts until
				// slot 1027: 2.2s after t0+500ms.
				{name: "1 at slot 1005 again", at: t0 + 500*ms, op: opTake, n: 1,
					want: Decision{Allowed: true, Remaining: 0, ResetAfter: 2200 * time.Millisecond}},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := mustWindow(t, tt.limit, tt.window, tt.slots)
			runWindowSteps(t, w, tt.steps)
		})
	}
}

// TestWindowNegativeTime: log times below zero are clamped, never a panic, and
// never admit what the latest time seen would not.
func TestWindowNegativeTime(t *testing.T) {
	w := mustWindow(t, 2, time.Second, 10)
	var s WindowState
	if d := w.Take(&s, t0, 2); !d.Allowed {
		t.Fatalf("take at t0 denied: %+v", d)
	}
	for _, now := range []int64{-1, -sec, math.MinInt64} {
		before := cloneWindow(s)
		if d := w.Take(&s, now, 1); d.Allowed || d.RetryAfter <= 0 {
			t.Errorf("take at %d = %+v, want a denial", now, d)
		}
		if d, _ := w.TakeSpan(&s, now, math.MaxInt64, 1); d.Allowed {
			t.Errorf("span take at %d = %+v, want a denial", now, d)
		}
		if !sameWindow(s, before) {
			t.Errorf("denied take at %d changed the state", now)
		}
	}
}

func TestWindowSlots(t *testing.T) {
	tests := []struct {
		name   string
		window time.Duration
		slots  int
		want   int
	}{
		{name: "as asked", window: time.Second, slots: 10, want: 10},
		{name: "max slots", window: time.Second, slots: MaxSlots, want: MaxSlots},
		{name: "1ns window", window: 1, slots: 10, want: 1},
		{name: "5ns window", window: 5, slots: 64, want: 5},
		{name: "equal", window: 7, slots: 7, want: 7},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := mustWindow(t, 1, tt.window, tt.slots)
			if got := w.Slots(); got != tt.want {
				t.Errorf("Slots() = %d, want %d", got, tt.want)
			}
			if w.Window() != tt.window || w.Limit() != 1 {
				t.Errorf("Window(), Limit() = %v, %d, want %v, 1", w.Window(), w.Limit(), tt.window)
			}
		})
	}
}

func TestNewSlidingWindow(t *testing.T) {
	tests := []struct {
		name       string
		limit      int64
		window     time.Duration
		slots      int
		wantErrors int
	}{
		{name: "valid", limit: 10, window: time.Second, slots: 10},
		{name: "limit 0", limit: 0, window: time.Second, slots: 10},
		{name: "max limit", limit: MaxWindowLimit, window: time.Second, slots: 10},
		{name: "max window", limit: 1, window: MaxRefill, slots: MaxSlots},
		{name: "negative limit", limit: -1, window: time.Second, slots: 10, wantErrors: 1},
		{name: "limit too big", limit: MaxWindowLimit + 1, window: time.Second, slots: 10, wantErrors: 1},
		{name: "window 0", limit: 1, window: 0, slots: 10, wantErrors: 1},
		{name: "negative window", limit: 1, window: -time.Second, slots: 10, wantErrors: 1},
		{name: "window too long", limit: 1, window: MaxRefill + 1, slots: 10, wantErrors: 1},
		{name: "slots 0", limit: 1, window: time.Second, slots: 0, wantErrors: 1},
		{name: "too many slots", limit: 1, window: time.Second, slots: MaxSlots + 1, wantErrors: 1},
		{name: "everything wrong", limit: -1, window: 0, slots: -1, wantErrors: 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w, err := NewSlidingWindow(tt.limit, tt.window, tt.slots)
			if got := errCount(err); got != tt.wantErrors {
				t.Fatalf("NewSlidingWindow(%d, %v, %d) = %v: %d errors, want %d", tt.limit, tt.window, tt.slots, err, got, tt.wantErrors)
			}
			if err != nil {
				if !errors.Is(err, ErrInvalidLimit) {
					t.Errorf("error %v does not wrap ErrInvalidLimit", err)
				}
				if w != (SlidingWindow{}) {
					t.Errorf("failed constructor returned %+v, want the zero value", w)
				}
			}
		})
	}
}

// Piece splits a pieced grant so that pieces differ by at most one, the
// last ones the larger, and add up to the total.
func TestPiece(t *testing.T) {
	for _, tt := range []struct {
		total, m int64
		want     []int64
	}{
		{10, 3, []int64{3, 3, 4}},
		{9, 3, []int64{3, 3, 3}},
		{2, 4, []int64{0, 0, 1, 1}},
		{0, 2, []int64{0, 0}},
		{7, 1, []int64{7}},
	} {
		var got []int64
		for i := range tt.m {
			got = append(got, Piece(tt.total, tt.m, i))
		}
		if diff := cmp.Diff(tt.want, got); diff != "" {
			t.Errorf("Piece(%d, %d, ·) (-want +got):\n%s", tt.total, tt.m, diff)
		}
	}
	if Piece(5, 0, 0) != 0 || Piece(5, 2, 2) != 0 || Piece(5, 2, -1) != 0 {
		t.Error("Piece outside its pieces is not 0")
	}
}
