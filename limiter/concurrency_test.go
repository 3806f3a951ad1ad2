package limiter

import (
	"errors"
	"math"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestConcurrencySteps(t *testing.T) {
	type step struct {
		name     string
		op       op // opTake, opCheck or opReturn
		n        int64
		want     Decision
		wantHeld int64
	}
	tests := []struct {
		name  string
		max   int64
		start ConcurrencyState
		steps []step
	}{
		{
			name: "two units", max: 2,
			steps: []step{
				{name: "take 1", op: opTake, n: 1, want: Decision{Allowed: true, Remaining: 1}, wantHeld: 1},
				// Waiting does not help by itself: no RetryAfter.
				{name: "take 2 of 1 free", op: opTake, n: 2, want: Decision{Remaining: 1}, wantHeld: 1},
				{name: "check 1", op: opCheck, n: 1, want: Decision{Allowed: true, Remaining: 0}, wantHeld: 1},
				{name: "take 3 of max 2", op: opTake, n: 3, want: Decision{Remaining: 1, RetryAfter: Never}, wantHeld: 1},
				{name: "take -1", op: opTake, n: -1, want: Decision{Remaining: 1, RetryAfter: Never}, wantHeld: 1},
				{name: "take 0", op: opTake, n: 0, want: Decision{Allowed: true, Remaining: 1}, wantHeld: 1},
				{name: "take the last", op: opTake, n: 1, want: Decision{Allowed: true, Remaining: 0}, wantHeld: 2},
				{name: "full", op: opTake, n: 1, want: Decision{Remaining: 0}, wantHeld: 2},
				{name: "return 1", op: opReturn, n: 1, wantHeld: 1},
				{name: "return -3 does nothing", op: opReturn, n: -3, wantHeld: 1},
				{name: "return more than held", op: opReturn, n: 5, wantHeld: 0},
				{name: "take 2", op: opTake, n: 2, want: Decision{Allowed: true, Remaining: 0}, wantHeld: 2},
			},
		},
		{
			name: "max 0", max: 0,
			steps: []step{
				{name: "take 1", op: opTake, n: 1, want: Decision{RetryAfter: Never}},
				{name: "take 0", op: opTake, n: 0, want: Decision{Allowed: true}},
			},
		},
		{
			// A state that holds more than the limit, say after the limit was
			// lowered, has nothing free.
			name: "held above max", max: 2, start: ConcurrencyState{Held: 5},
			steps: []step{
				{name: "take 1", op: opTake, n: 1, want: Decision{Remaining: 0}, wantHeld: 5},
				{name: "take 0", op: opTake, n: 0, want: Decision{Allowed: true, Remaining: 0}, wantHeld: 5},
				{name: "return 2", op: opReturn, n: 2, wantHeld: 3},
				{name: "return 1", op: opReturn, n: 1, wantHeld: 2},
				{name: "still full", op: opTake, n: 1, want: Decision{Remaining: 0}, wantHeld: 2},
			},
		},
		{
			name: "huge max", max: math.MaxInt64,
			steps: []step{
				{name: "take max", op: opTake, n: math.MaxInt64, want: Decision{Allowed: true}, wantHeld: math.MaxInt64},
				{name: "take 1", op: opTake, n: 1, want: Decision{}, wantHeld: math.MaxInt64},
				{name: "return max", op: opReturn, n: math.MaxInt64, wantHeld: 0},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := NewConcurrency(tt.max)
			if err != nil {
				t.Fatal(err)
			}
			if c.Max() != tt.max {
				t.Errorf("Max() = %d, want %d", c.Max(), tt.max)
			}
			s := tt.start
			for i, st := range tt.steps {
				var got Decision
				switch st.op {
				case opTake:
					got = c.Take(&s, st.n)
				case opCheck:
					got = c.Check(s, st.n)
				case opReturn:
					c.Return(&s, st.n)
				}
				if st.op != opReturn {
					if diff := cmp.Diff(st.want, got); diff != "" {
						t.Errorf("step %d %q: decision mismatch (-want +got):\n%s", i, st.name, diff)
					}
				}
				if s.Held != st.wantHeld {
					t.Errorf("step %d %q: Held = %d, want %d", i, st.name, s.Held, st.wantHeld)
				}
			}
		})
	}
}

func TestNewConcurrency(t *testing.T) {
	tests := []struct {
		name    string
		max     int64
		wantErr bool
	}{
		{name: "zero", max: 0},
		{name: "positive", max: 10},
		{name: "negative", max: -1, wantErr: true},
		{name: "min int", max: math.MinInt64, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := NewConcurrency(tt.max)
			if (err != nil) != tt.wantErr {
				t.Fatalf("NewConcurrency(%d) error = %v, want error %v", tt.max, err, tt.wantErr)
			}
			if err != nil && !errors.Is(err, ErrInvalidLimit) {
				t.Errorf("error %v does not wrap ErrInvalidLimit", err)
			}
			if err != nil && c != (Concurrency{}) {
				t.Errorf("failed constructor returned %+v", c)
			}
		})
	}
}
