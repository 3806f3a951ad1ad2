//go:build unix

package jepsen

import (
	"testing"
	"time"
)

// budgetKeys: one Budget rule, 10 tokens a second, burst 10, debt up to 10,
// leases up to 1s: B + D + r·Λ = 30 in a short window.
var budgetKeys = []KeySpec{
	{Key: "bud/tokens", Algorithm: AlgorithmTokenBucket, Limit: 10, Period: time.Second, Burst: 10, MaxLease: time.Second,
		Budget: "bud", MaxDebt: 10},
}

// reserve adds an ok reserve of n on key as reservation res of process p.
func (h *testHistory) reserve(p, key string, res uint64, n int64, t0, t1 int64) *testHistory {
	return h.op(p, OpReserve, t0, t1, OK, Event{Key: key, N: n, Res: res}, Event{Res: res})
}

// settle adds a settle of reservation res at n, completing as typ.
func (h *testHistory) settle(p, key string, res uint64, n int64, t0, t1 int64, typ string) *testHistory {
	return h.op(p, OpSettle, t0, t1, typ, Event{Key: key, N: n, Res: res}, Event{Res: res})
}

// cancel adds an ok cancel of reservation res.
func (h *testHistory) cancel(p, key string, res uint64, t0, t1 int64) *testHistory {
	return h.op(p, OpCancel, t0, t1, OK, Event{Key: key, Res: res}, Event{Res: res})
}

func TestCheckBudgetOnKnownHistories(t *testing.T) {
	const k = "bud/tokens"
	debt20 := []KeySpec{budgetKeys[0]}
	debt20[0].MaxDebt = 20
	tests := []struct {
		name string
		keys []KeySpec
		h    *testHistory
		want string // "" = valid
	}{
		{
			name: "settle above, below, cancel and never settled, within the bound",
			h: new(testHistory).reserve("c1", k, 1, 10, msec(0), msec(1)).settle("c1", k, 1, 15, msec(5), msec(6), OK).
				reserve("c1", k, 2, 10, msec(10), msec(11)).settle("c1", k, 2, 4, msec(15), msec(16), OK).
				reserve("c2", k, 1, 10, msec(20), msec(21)).cancel("c2", k, 1, msec(22), msec(23)).
				reserve("c2", k, 2, 5, msec(30), msec(31)),
		},
		{
			// The retried Settle the SDK must make a no-op, applied
			// twice: the second charge is caught even where the bound
			// has room for it.
			name: "a settle applied twice",
			h: new(testHistory).reserve("c1", k, 1, 5, msec(0), msec(1)).
				settle("c1", k, 1, 8, msec(5), msec(6), OK).settle("c1", k, 1, 8, msec(7), msec(8), OK),
			want: "ended twice",
		},
		{
			name: "a cancel after a settle",
			h: new(testHistory).reserve("c1", k, 1, 5, msec(0), msec(1)).
				settle("c1", k, 1, 3, msec(5), msec(6), OK).cancel("c1", k, 1, msec(7), msec(8)),
			want: "ended twice",
		},
		{
			name: "a settle that failed, then one that applied",
			h: new(testHistory).reserve("c1", k, 1, 5, msec(0), msec(1)).
				settle("c1", k, 1, 8, msec(5), msec(6), Fail).settle("c1", k, 1, 8, msec(7), msec(8), OK),
		},
		{
			// 20 reserved and 20 more settled as debt within 10ms: 40
			// above B + D + r·(Δ+Λ) = 30.1.
			name: "debt above the cap",
			h: new(testHistory).reserve("c1", k, 1, 10, msec(0), msec(1)).settle("c1", k, 1, 20, msec(5), msec(6), OK).
				reserve("c2", k, 1, 10, msec(2), msec(3)).settle("c2", k, 1, 20, msec(8), msec(9), OK),
			want: "above B + D + r·(Δ+Λ)",
		},
		{
			name: "the same debt within a cap of 20",
			keys: debt20,
			h: new(testHistory).reserve("c1", k, 1, 10, msec(0), msec(1)).settle("c1", k, 1, 20, msec(5), msec(6), OK).
				reserve("c2", k, 1, 10, msec(2), msec(3)).settle("c2", k, 1, 20, msec(8), msec(9), OK),
		},
		{
			// 40 reserved, 15 given back at settle and spent again:
			// 25 charged.
			name: "a refund spent again",
			h: new(testHistory).reserve("c1", k, 1, 20, msec(0), msec(1)).settle("c1", k, 1, 5, msec(5), msec(6), OK).
				reserve("c1", k, 2, 20, msec(7), msec(8)),
		},
		{
			name: "a settle above whose outcome is unknown counts nowhere",
			h:    new(testHistory).reserve("c1", k, 1, 20, msec(0), msec(1)).settle("c1", k, 1, 40, msec(5), msec(6), Info),
		},
		{
			name: "reserved beyond the bound",
			h:    new(testHistory).reserve("c1", k, 1, 20, msec(0), msec(1)).reserve("c2", k, 1, 20, msec(0), msec(1)),
			want: "40 tokens charged",
		},
		{
			name: "a settle of a reservation never made",
			h:    new(testHistory).settle("c1", k, 9, 3, msec(5), msec(6), OK),
			want: "never reserved",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			keys := tc.keys
			if keys == nil {
				keys = budgetKeys
			}
			r := CheckBudget(tc.h.events, keys, Options{})
			if tc.want == "" {
				requireValid(t, r)
			} else {
				requireInvalid(t, r, tc.want)
			}
		})
	}
}

// A history with no budget keys passes, and counts nothing.
func TestCheckBudgetWithoutBudgets(t *testing.T) {
	r := CheckBudget(steady("tb", 0, 5, 100*time.Millisecond).events, testKeys, Options{})
	requireValid(t, r)
	if r.Metrics["reservations"] != 0 {
		t.Errorf("reservations = %v, want 0", r.Metrics["reservations"])
	}
}
