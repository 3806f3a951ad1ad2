package bench

import (
	"context"
	"testing"
	"time"
)

// calls returns admitted calls of key 0 over [inv, inv+d] µs, one per entry.
func admittedAt(d uint32, invs ...uint32) []Call {
	out := make([]Call, len(invs))
	for i, inv := range invs {
		out[i] = NewCall(0, true, inv, inv+d)
	}
	return out
}

// Worst counts a call in a window only if its whole [Inv, Ret] lies inside
// one shorter than W, and finds the fullest such window.
func TestWindowWorst(t *testing.T) {
	e := WindowEnvelope{Limit: 3, Window: time.Second} // 1e6 µs
	tests := []struct {
		name  string
		calls []Call
		want  int64
	}{
		{"L in a window", admittedAt(0, 0, 500_000, 999_999), 3},
		{"L+1 in a window", admittedAt(0, 0, 1, 500_000, 999_999), 4},
		{"a window apart", admittedAt(0, 0, 1, 2, 1_000_000, 1_000_001), 3},
		{"a call that straddles is not counted", append(admittedAt(0, 0, 1, 2), NewCall(0, true, 999_000, 1_000_000)), 3},
		{"refused calls do not count", append(admittedAt(0, 0, 1, 2), NewCall(0, false, 3, 4)), 3},
		{"long calls", admittedAt(600_000, 0, 100_000, 300_000, 399_999), 4},
		{"a long call past the window", admittedAt(600_000, 0, 100_000, 300_000, 400_000), 3},
	}
	for _, tt := range tests {
		if got := e.Worst(tt.calls, 1)[0]; got != tt.want {
			t.Errorf("%s: Worst = %d, want %d", tt.name, got, tt.want)
		}
	}
	// Two keys are checked apart.
	two := append(admittedAt(0, 0, 1, 2), NewCall(1, true, 3, 3), NewCall(1, true, 4, 4))
	if got := e.Worst(two, 2); got[0] != 3 || got[1] != 2 {
		t.Errorf("two keys: Worst = %v, want [3 2]", got)
	}
}

// A report of a window that admitted L+1 in a window says so: Over and the
// fullest window.
func TestWindowReportOver(t *testing.T) {
	w := Workload{Clients: 1, Keys: 1, Duration: 2 * time.Second, Rate: 3, Per: time.Second, Window: true}
	env := WindowEnvelope{Limit: 3, Window: time.Second}
	r := Report{Workload: w, Window: &env, Result: Result{Elapsed: 2 * time.Second, PerKey: []int64{4}, Admitted: 4,
		Calls: admittedAt(0, 0, 1, 500_000, 999_999)}}
	r.check()
	if r.Over != 1 || r.WorstWindow != 4 || r.Allowed != 3+6 {
		t.Errorf("over %d, worst %d, allowed %d; want 1, 4 and L + L·2s/1s = 9", r.Over, r.WorstWindow, r.Allowed)
	}
}

// TestRedisWindowOverAdmits runs the sorted-set window against a real,
// private redis-server: one client with a correct clock keeps the bound;
// clients whose clocks are 2s apart, and many clients whose requests share
// microseconds, admit more than L in a window. It is skipped when
// redis-server is not on PATH.
func TestRedisWindowOverAdmits(t *testing.T) {
	ctx := context.Background()
	l := startLocalRedis(t, (*Local).StartRedis)
	w := Workload{Clients: 1, Keys: 1, Duration: 1500 * time.Millisecond, Rate: 100, Per: 500 * time.Millisecond, Window: true}
	rep, err := RunRedisWindow(ctx, l.RedisAddr, 0, w, Hooks{})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Over != 0 || rep.WorstWindow < w.Rate {
		t.Errorf("one client, correct clock: %s; want L in a window and nothing over", rep.Summary())
	}
	w.Clients = 2
	rep, err = RunRedisWindow(ctx, l.RedisAddr, 2*time.Second, w, Hooks{})
	if err != nil {
		t.Fatal(err)
	}
	// The client ahead drops the other's entries at once: each admits
	// about L per window on its own.
	if rep.Over < w.Rate/2 {
		t.Errorf("two clients 4s apart: %s; want over-admission of at least L/2", rep.Summary())
	}
}
