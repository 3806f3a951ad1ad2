//go:build unix

package jepsen

import (
	"math"
	"strings"
	"testing"
	"time"
)

// Each row is a small history fed to one checker: a known-bad history the
// checker must reject (want names the violation) or its known-good twin,
// which must pass. A checker that cannot fail proves nothing.
func TestCheckersOnKnownHistories(t *testing.T) {
	const sec = time.Second
	tests := []struct {
		name  string
		check checkFunc
		opts  Options
		h     *testHistory
		want  string // "" = valid
	}{
		// Idempotency.
		{
			name: "double grant of one seq", check: CheckIdempotency,
			h: new(testHistory).grant("c1", "tb", 5, msec(0), msec(1), 1, 5, sec).
				grant("c1", "tb", 5, msec(2), msec(3), 2, 5, sec),
			want: "request c1/5 applied twice",
		},
		{
			name: "retried seq with the same answer", check: CheckIdempotency,
			h: new(testHistory).grant("c1", "tb", 5, msec(0), msec(1), 1, 5, sec).
				grant("c1", "tb", 5, msec(2), msec(3), 1, 5, sec),
		},
		{
			name: "lease id granted to two requests", check: CheckIdempotency,
			h: new(testHistory).grant("c1", "tb", 1, msec(0), msec(1), 7, 5, sec).
				grant("c2", "tb", 1, msec(2), msec(3), 7, 5, sec),
			want: "lease 7 granted twice",
		},
		{
			name: "retried grant counts once in the envelope", check: CheckGrants,
			h: new(testHistory).grant("c1", "tb", 5, msec(0), msec(1), 1, 10, sec).
				grant("c1", "tb", 5, msec(2), msec(3), 1, 10, sec),
		},

		// Lease expiry.
		{
			name: "admission after lease expiry", check: CheckLeaseExpiry,
			h: new(testHistory).grant("c1", "tb", 1, msec(0), msec(1), 1, 5, sec).
				allow("c1", "tb", msec(1000.5), msec(1001), 1, 1),
			want: "after it expired",
		},
		{
			name: "admission whose interval straddles the expiry", check: CheckLeaseExpiry,
			h: new(testHistory).grant("c1", "tb", 1, msec(0), msec(1), 1, 5, sec).
				allow("c1", "tb", msec(999), msec(1002), 1, 1),
		},
		{
			name: "admission from a lease never granted", check: CheckLeaseExpiry,
			h:    new(testHistory).allow("c1", "tb", msec(10), msec(11), 9, 1),
			want: "which no grant in the history returned",
		},
		{
			name: "admission from an incomplete grant's lease", check: CheckLeaseExpiry,
			h: new(testHistory).op("c1", OpGrant, msec(0), 0, "", Event{Key: "tb", N: 5, ClientID: "c1", Seq: 1}, Event{}).
				allow("c1", "tb", msec(500), msec(501), 9, 1),
		},
		{
			name: "admission from an info grant's lease", check: CheckLeaseExpiry,
			h: new(testHistory).op("c1", OpGrant, msec(0), msec(2000), Info, Event{Key: "tb", N: 5, ClientID: "c1", Seq: 1}, Event{}).
				allow("c1", "tb", msec(500), msec(501), 9, 1),
		},
		{
			name: "admission from an unknown grant more than MaxLease later", check: CheckLeaseExpiry,
			h: new(testHistory).op("c1", OpGrant, msec(0), 0, "", Event{Key: "tb", N: 5, ClientID: "c1", Seq: 1}, Event{}).
				allow("c1", "tb", msec(1100), msec(1101), 9, 1),
			want: "more than MaxLease",
		},
		{
			name: "another process's unknown grant does not explain a lease", check: CheckLeaseExpiry,
			h: new(testHistory).op("c2", OpGrant, msec(0), 0, "", Event{Key: "tb", N: 5, ClientID: "c2", Seq: 1}, Event{}).
				allow("c1", "tb", msec(500), msec(501), 9, 1),
			want: "which no grant in the history returned",
		},
		{
			name: "lease ttl beyond MaxLease", check: CheckLeaseExpiry,
			h:    new(testHistory).grant("c1", "tb", 1, msec(0), msec(1), 1, 5, 2*sec),
			want: "beyond the key's MaxLease",
		},

		// Per-lease budget.
		{
			name: "lease over-spent", check: CheckLeaseBudget,
			h: new(testHistory).grant("c1", "tb", 1, msec(0), msec(1), 1, 5, sec).
				allows(6, "c1", "tb", msec(10), msec(11), 1),
			want: "6 tokens spent + 0 released > 5 granted",
		},
		{
			name: "lease spent exactly", check: CheckLeaseBudget,
			h: new(testHistory).grant("c1", "tb", 1, msec(0), msec(1), 1, 5, sec).
				allows(5, "c1", "tb", msec(10), msec(11), 1),
		},
		{
			name: "spent plus released beyond the grant", check: CheckLeaseBudget,
			h: new(testHistory).grant("c1", "tb", 1, msec(0), msec(1), 1, 5, sec).
				allows(3, "c1", "tb", msec(10), msec(11), 1).
				release("c1", 1, 3, msec(20), msec(21)),
			want: "3 tokens spent + 3 released > 5 granted",
		},
		{
			name: "lease spent by another process", check: CheckLeaseBudget,
			h: new(testHistory).grant("c1", "tb", 1, msec(0), msec(1), 1, 5, sec).
				allow("c2", "tb", msec(10), msec(11), 1, 1),
			want: "which was granted to c1",
		},
		{
			name: "lease spent after its release", check: CheckLeaseBudget,
			h: new(testHistory).grant("c1", "tb", 1, msec(0), msec(1), 1, 5, sec).
				release("c1", 1, 2, msec(100), msec(101)).
				allow("c1", "tb", msec(200), msec(201), 1, 1),
			want: "after its release completed",
		},
		{
			name: "lease granted to two processes", check: CheckLeaseBudget,
			h: new(testHistory).grant("c1", "tb", 1, msec(0), msec(1), 7, 5, sec).
				grant("c2", "tb", 1, msec(2), msec(3), 7, 5, sec),
			want: "granted to more than one process",
		},

		// The admission envelope, token bucket: B + r·Λ = 20 at one instant.
		{
			name: "B+r·Λ+1 admissions at one instant", check: CheckAdmissions,
			h:    new(testHistory).allows(21, "c1", "tb", msec(1000), msec(1000), 0),
			want: "21 tokens admitted",
		},
		{
			name: "B+r·Λ admissions at one instant", check: CheckAdmissions,
			h: new(testHistory).allows(20, "c1", "tb", msec(1000), msec(1000), 0),
		},
		{
			name: "admission straddling the window edge is not counted", check: CheckAdmissions,
			h: new(testHistory).allows(20, "c1", "tb", msec(1000), msec(1000), 0).
				allow("c1", "tb", msec(900), msec(1001), 0, 1),
		},
		{
			name: "admission just inside the window is counted", check: CheckAdmissions,
			h: new(testHistory).allows(20, "c1", "tb", msec(1000), msec(1000), 0).
				allow("c1", "tb", msec(999.9), msec(1000), 0, 1),
			want: "21 tokens admitted",
		},
		{
			name: "AllowN counts its N", check: CheckAdmissions,
			h: new(testHistory).allow("c1", "tb", msec(1000), msec(1000), 0, 15).
				allow("c1", "tb", msec(1000), msec(1000), 0, 6),
			want: "21 tokens admitted",
		},
		{
			name: "strict: B+1 at one instant", check: CheckAdmissions,
			h:    new(testHistory).allows(11, "c1", "strict", msec(1000), msec(1000), 0),
			want: "more than B + r·Δ = 10.000",
		},
		{
			name: "strict: steady rate right at the bound", check: CheckAdmissions,
			h: steady("strict", 0, 100, 100*time.Millisecond),
		},
		{
			name: "strict: one admission above the bound", check: CheckAdmissions,
			h:    steady("strict", 0, 100, 100*time.Millisecond).allow("c1", "strict", msec(5000), msec(5000), 0, 1),
			want: "tokens admitted",
		},
		{
			name: "fallback admissions count by default", check: CheckAdmissions,
			h:    fallbacks(21),
			want: "21 tokens admitted",
		},
		{
			name: "fallback admissions excluded", check: CheckAdmissions, opts: Options{ExcludeFallback: true},
			h: fallbacks(21),
		},
		{
			// 1.0005 times the rate: over by half a token after 100 s.
			name: "rate drift beyond an exact clock", check: CheckAdmissions,
			h:    steady("strict", 0, 1000, 99950*time.Microsecond),
			want: "tokens admitted",
		},
		{
			name: "rate drift within the allowed clock-rate error", check: CheckAdmissions, opts: Options{ClockRatePPM: 1000},
			h: steady("strict", 0, 1000, 99950*time.Microsecond),
		},

		// The admission envelope, sliding window: 10 per 1s window.
		{
			name: "sliding window: L+1 in a window", check: CheckAdmissions,
			h: new(testHistory).allows(10, "c1", "sw", msec(0), msec(0), 0).
				allow("c1", "sw", msec(999.999), msec(999.999), 0, 1),
			want: "11 tokens admitted",
		},
		{
			name: "sliding window: L, then L one window later", check: CheckAdmissions,
			h: new(testHistory).allows(10, "c1", "sw", msec(0), msec(0), 0).
				allows(10, "c1", "sw", msec(1000), msec(1000), 0),
		},
		{
			name: "sliding window: straddler not counted", check: CheckAdmissions,
			h: new(testHistory).allows(10, "c1", "sw", msec(0), msec(0), 0).
				allow("c1", "sw", msec(500), msec(1000), 0, 1),
		},
		// A central decision answered late (fsm/DESIGN.md): c1's calls
		// wait 1.05s for their grant, c2's are decided a window after
		// c1's grant applied; spending the late answer puts 20 in one
		// instant. The calls' intervals alone span more than a window.
		{
			name: "sliding window: central grant answered late, spent next to the next window's", check: CheckAdmissions,
			h:    lateCentral(msec(1050)),
			want: "20 tokens admitted",
		},
		{
			name: "sliding window: central grant answered in time", check: CheckAdmissions,
			h: lateCentral(msec(20)),
		},
		{
			name: "sliding window: late central calls of a process whose lease request was answered centrally are not narrowed", check: CheckAdmissions,
			h: lateCentral(msec(1050)).
				grant("c1", "sw", 9, msec(2000), msec(2001), 0, 1, 0),
		},
		{
			// The chaos runs' shape: the SDK's probe of an unreachable
			// cluster is a lease request; answered with a lease, it serves
			// no central call, so the late ones are still counted from
			// their answer (found blind in two chaos runs on the SDK
			// before its fix).
			name: "sliding window: a late central answer of a process that also holds a lease", check: CheckAdmissions,
			h: lateCentral(msec(1050)).
				grant("c1", "sw", 9, msec(2000), msec(2001), 5, 1, sec),
			want: "20 tokens admitted",
		},
		// A token bucket's central grant spent late (fsm/DESIGN.md): on
		// "tb" (Λ 1s) c1's grant, applied at 0, is answered 2.05s late;
		// c2 leased the 10 refilled by 1s and spends them at 1.99s, just
		// within its lease; c3 takes the next 10 at 2s. Counted from its
		// answer, c1's spending puts 30 in 60ms, where B + r·(Δ+Λ)
		// allows 20.6: the proof covers a token spent at most Λ after it
		// was granted. Counted from their invoke (the checker before),
		// c1's calls span 2.05s and the run passed.
		{
			name: "token bucket: central grant answered past its max lease, spent next to later grants", check: CheckAdmissions,
			h: lateBucket("tb", msec(2050)).
				grant("c2", "tb", 1, msec(1000), msec(1000.1), 7, 10, sec).
				allows(10, "c2", "tb", msec(1990), msec(1990.1), 7),
			want: "30 tokens admitted",
		},
		{
			name: "token bucket: central grant answered within its max lease", check: CheckAdmissions,
			h: lateBucket("tb", msec(900)).
				grant("c2", "tb", 1, msec(1000), msec(1000.1), 7, 10, sec).
				allows(10, "c2", "tb", msec(1990), msec(1990.1), 7),
		},
		{
			// Λ = 0 (reserve 10 of burst 10): its central calls are
			// counted from their invoke; from its answer, 20 in 50ms.
			name: "strict token bucket with no leases: central calls are not narrowed", check: CheckAdmissions,
			h: lateBucket("strict", msec(2050)),
		},
		{
			name: "strict token bucket with no leases: central calls decided in time", check: CheckAdmissions,
			h: lateBucket("strict", msec(1)),
		},

		// The grant envelope.
		{
			name: "bucket reset after a full restart", check: CheckGrants,
			h:    resetAfterRestart(10),
			want: "20 tokens granted net of releases",
		},
		{
			name: "bucket refilled only by elapsed time after a full restart", check: CheckGrants,
			h: resetAfterRestart(7),
		},
		{
			name: "released tokens granted again", check: CheckGrants,
			h: new(testHistory).grant("c1", "tb", 1, msec(0), msec(1), 1, 10, sec).
				release("c1", 1, 10, msec(2), msec(3)).
				grant("c2", "tb", 1, msec(4), msec(5), 2, 10, sec),
		},
		{
			name: "an info release may have given tokens back", check: CheckGrants,
			h: new(testHistory).grant("c1", "tb", 1, msec(0), msec(1), 1, 10, sec).
				op("c1", OpRelease, msec(2), msec(3000), Info, Event{Lease: 1, N: 10}, Event{}).
				grant("c2", "tb", 1, msec(4), msec(5), 2, 10, sec),
		},
		{
			name: "tokens granted twice without a release", check: CheckGrants,
			h: new(testHistory).grant("c1", "tb", 1, msec(0), msec(1), 1, 10, sec).
				grant("c2", "tb", 1, msec(4), msec(5), 2, 10, sec),
			want: "20 tokens granted net of releases",
		},
		{
			name: "sliding window: grants beyond L in a window", check: CheckGrants,
			h: new(testHistory).grant("c1", "sw", 1, msec(0), msec(1), 1, 10, sec).
				grant("c2", "sw", 1, msec(500), msec(501), 2, 1, sec),
			want: "11 tokens granted net of releases",
		},
		// Leases of a sliding window in pieces (10 per 1s, pieces of
		// 100ms): each piece counts over the time its bucket began.
		{
			name: "sliding window: pieced leases that continue each other", check: CheckGrants,
			h: new(testHistory).pieced("c1", "sw", 1, msec(0), msec(1), 1, 10, msec(1000), 10, 100*time.Millisecond).
				pieced("c1", "sw", 2, msec(990), msec(991), 2, 10, msec(2000), 10, 100*time.Millisecond).
				ticks("c3", "sw", msec(0), msec(2100), msec(50)),
		},
		{
			name: "sliding window: the same leases without pieces", check: CheckGrants,
			h: new(testHistory).grant("c1", "sw", 1, msec(0), msec(1), 1, 10, 999*time.Millisecond).
				grant("c1", "sw", 2, msec(990), msec(991), 2, 10, 1009*time.Millisecond).
				ticks("c3", "sw", msec(0), msec(2100), msec(50)),
			want: "20 tokens granted net of releases",
		},
		{
			name: "sliding window: pieced leases whose buckets overlap", check: CheckGrants,
			h: new(testHistory).pieced("c1", "sw", 1, msec(0), msec(1), 1, 10, msec(1000), 10, 100*time.Millisecond).
				pieced("c2", "sw", 1, msec(500), msec(501), 2, 10, msec(1500), 10, 100*time.Millisecond).
				ticks("c3", "sw", msec(0), msec(2100), msec(50)),
			want: "15 tokens granted net of releases",
		},
		{
			name: "sliding window: released pieces granted again", check: CheckGrants,
			h: new(testHistory).pieced("c1", "sw", 1, msec(0), msec(1), 1, 10, msec(1000), 10, 100*time.Millisecond).
				release("c1", 1, 5, msec(450), msec(451)).
				pieced("c2", "sw", 1, msec(460), msec(461), 2, 5, msec(1000), 5, 100*time.Millisecond).
				pieced("c1", "sw", 2, msec(990), msec(991), 3, 5, msec(1500), 5, 100*time.Millisecond).
				ticks("c3", "sw", msec(0), msec(2100), msec(50)),
		},
		{
			name: "sliding window: pieces no later answer places count nowhere", check: CheckGrants,
			h: new(testHistory).pieced("c1", "sw", 1, msec(0), msec(1), 1, 10, msec(1000), 10, 100*time.Millisecond).
				pieced("c2", "sw", 1, msec(500), msec(501), 2, 10, msec(1500), 10, 100*time.Millisecond),
		},

		// Durability.
		{
			name: "durability: bucket reset after a full restart", check: CheckDurability,
			h:    resetAfterRestart(10),
			want: "across the outage",
		},
		{
			name: "durability: bucket refilled by elapsed time only", check: CheckDurability,
			h: resetAfterRestart(7),
		},
		{
			name: "durability: admissions from a reset bucket", check: CheckDurability,
			h: new(testHistory).allows(20, "c1", "strict", msec(0), msec(1), 0).
				nemesis(OpKill, "leader:n1,n2,n3", msec(100), msec(110)).
				nemesis(OpRestart, "leader:n1,n2,n3", msec(500), msec(600)).
				allows(10, "c1", "strict", msec(700), msec(701), 0),
			want: "across the outage",
		},
		{
			name: "durability: a minority restart is not a full outage", check: CheckDurability,
			h: new(testHistory).grant("c1", "tb", 1, msec(0), msec(1), 1, 10, sec).
				nemesis(OpKill, "leader:n1,n2", msec(100), msec(110)).
				nemesis(OpKill, "n3", msec(200), 0). // never completed: maybe not dead
				nemesis(OpRestart, "leader:n1,n2", msec(500), msec(600)).
				grant("c1", "tb", 2, msec(700), msec(701), 2, 10, sec),
		},

		{
			// An operator removed n1 (stopped, never killed) and n4 took
			// its place; killing n2, n3 and n4 is then a full outage, and
			// the bucket coming back full across it is caught.
			name: "durability: a full outage after a membership change", check: CheckDurability,
			h: new(testHistory).allows(20, "c1", "strict", msec(0), msec(1), 0).
				nemesis(OpJoin, "n4", msec(12), msec(13)).
				nemesis(OpLeave, "n1", msec(14), msec(50)).
				nemesis(OpKill, "leader:n2,n3,n4", msec(100), msec(110)).
				nemesis(OpRestart, "leader:n2,n3,n4", msec(500), msec(600)).
				allows(10, "c1", "strict", msec(700), msec(701), 0),
			want: "across the outage",
		},
		{
			// A spare that has not joined yet is no member: killing the
			// three members is a full outage though n4 never ran.
			name: "durability: a spare that never joined does not hide an outage", check: CheckDurability,
			h: new(testHistory).allows(20, "c1", "strict", msec(0), msec(1), 0).
				nemesis(OpKill, "leader:n1,n2,n3", msec(100), msec(110)).
				nemesis(OpRestart, "leader:n1,n2,n3", msec(500), msec(600)).
				allows(10, "c1", "strict", msec(700), msec(701), 0).
				nemesis(OpJoin, "n4", msec(800), msec(801)),
			want: "across the outage",
		},

		// Log time.
		{
			name: "log time goes back after a full restart", check: CheckLogTime,
			h: new(testHistory).op("c1", OpGrant, msec(0), msec(1), OK, Event{Key: "tb", ClientID: "c1", Seq: 1}, Event{Lease: 1, N: 1, LogTime: msec(5000)}).
				op("c1", OpGrant, msec(2000), msec(2001), OK, Event{Key: "tb", ClientID: "c1", Seq: 2}, Event{Lease: 2, N: 1, LogTime: msec(1)}),
			want: "log time went back",
		},
		{
			name: "log time runs at twice the rate", check: CheckLogTime,
			h:    logTimes(2),
			want: "log time ran fast",
		},
		{
			name: "log time at the reference rate, an election not credited", check: CheckLogTime,
			h: logTimes(1),
		},
		{
			// Crediting an election's span exactly keeps log time at the
			// reference rate; crediting more runs it ahead of the real
			// clock, which a sliding window's pieces cannot allow: after
			// the election the new leader's image of the buckets would
			// come earlier than the old one's, where the lessees of
			// before the election still spend (fsm/DESIGN.md, "Across
			// elections").
			name: "log time credited with an election's span", check: CheckLogTime,
			h: logTimesCredit(1, 2*time.Second),
		},
		{
			name: "log time credited with more than an election's span", check: CheckLogTime,
			h:    logTimesCredit(1, 2*time.Second+200*time.Millisecond),
			want: "log time ran fast",
		},
		{
			name: "log time 0.1% fast fails with exact clocks", check: CheckLogTime,
			h:    logTimes(1.001),
			want: "log time ran fast",
		},
		{
			name: "log time 0.1% fast within the allowed clock-rate error", check: CheckLogTime, opts: Options{ClockRatePPM: 1000},
			h: logTimes(1.001),
		},

		// History well-formedness.
		{
			name: "completion without an invoke", check: CheckHistory,
			h:    &testHistory{events: []Event{{Time: 5, Process: "c1", Type: OK, Op: OpAllow, ID: 3}}},
			want: "has no open invoke",
		},
		{
			name: "allow on a key keys.json lacks", check: CheckHistory,
			h:    new(testHistory).allow("c1", "nope", msec(0), msec(1), 0, 1),
			want: `names key "nope"`,
		},
		{
			name: "unpaired invoke is allowed", check: CheckHistory,
			h: new(testHistory).op("c1", OpAllow, msec(0), 0, "", Event{Key: "tb", N: 1}, Event{}),
		},
		{
			name: "invalid options", check: CheckHistory, opts: Options{ClockRatePPM: -1},
			h:    new(testHistory),
			want: "clock rate error",
		},

		// Availability bounds.
		{
			name: "failover slower than the bound", check: CheckAvailability, opts: Options{MaxFailover: sec},
			h:    failovers(),
			want: "next grant after 2s",
		},
		{
			name: "failover within the bound", check: CheckAvailability, opts: Options{MaxFailover: 3 * sec},
			h: failovers(),
		},
		{
			name: "leader fault never followed by a grant", check: CheckAvailability, opts: Options{MaxFailover: 100 * sec},
			h:    new(testHistory).nemesis(OpKill, "leader:n1", msec(0), msec(1)).allow("c1", "tb", msec(100), msec(101), 0, 1),
			want: "no grant",
		},
		{
			name: "recovery slower than the bound", check: CheckAvailability, opts: Options{MaxRecovery: sec},
			h:    failovers(),
			want: "first grant 1.5s after the last heal",
		},
		{
			name: "efficiency below the bound", check: CheckAvailability, opts: Options{MinEfficiency: 0.9},
			h:    new(testHistory).allows(5, "c1", "tb", msec(0), msec(1000), 0),
			want: "efficiency 0.250",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := tt.check(tt.h.events, testKeys, tt.opts)
			if tt.want == "" {
				requireValid(t, r)
			} else {
				requireInvalid(t, r, tt.want)
			}
			if r.Metrics["violations"] != float64(len(r.Violations)) && len(r.Violations) < maxViolations {
				t.Errorf("metric violations = %v, want %d", r.Metrics["violations"], len(r.Violations))
			}
		})
	}
}

// steady returns B admissions at t0, then one every gap, count times: a
// strict bucket's bound B + r·Δ exactly when gap is the refill time of one
// token (100ms for the test keys).
func steady(key string, t0 int64, count int, gap time.Duration) *testHistory {
	h := new(testHistory).allows(10, "c1", key, t0, t0, 0)
	for i := 1; i <= count; i++ {
		t := t0 + int64(i)*int64(gap)
		h.allow("c1", key, t, t, 0, 1)
	}
	return h
}

// fallbacks returns n fallback admissions at one instant.
func fallbacks(n int) *testHistory {
	h := new(testHistory)
	for range n {
		h.op("c1", OpAllow, msec(10), msec(10), OK, Event{Key: "tb", N: 1}, Event{Value: ValueFallback})
	}
	return h
}

// resetAfterRestart drains key tb with a grant of 10, kills and restarts
// every node, and 700ms after the start grants after: 7 is what 700ms
// refills, 10 is a bucket that came back full.
func resetAfterRestart(after int64) *testHistory {
	return new(testHistory).grant("c1", "tb", 1, msec(0), msec(1), 1, 10, time.Second).
		nemesis(OpKill, "leader:n1,n2,n3", msec(100), msec(110)).
		nemesis(OpRestart, "leader:n1,n2,n3", msec(500), msec(600)).
		grant("c1", "tb", 2, msec(700), msec(701), 2, after, time.Second)
}

// logTimes returns grants every 100ms for 10s whose log time runs at rate
// times the reference clock, with a 2s election at 5s that is not credited.
func logTimes(rate float64) *testHistory { return logTimesCredit(rate, 0) }

// logTimesCredit is logTimes with credit added to log time at the
// election.
func logTimesCredit(rate float64, credit time.Duration) *testHistory {
	h := new(testHistory)
	logT := 1e9
	prev := 0.0
	for i := range 100 {
		t := float64(i) * 100e6
		if i >= 50 {
			t += 2e9
		}
		if i == 50 {
			prev = t // the election's time is lost
			logT += float64(credit)
		}
		logT += (t - prev) * rate
		prev = t
		h.op("c1", OpGrant, int64(t), int64(t)+msec(1), OK,
			Event{Key: "tb", N: 1, ClientID: "c1", Seq: uint64(i + 1)},
			Event{Lease: uint64(i + 1), N: 1, TTL: int64(time.Second), LogTime: int64(logT + 0.5e6)})
	}
	return h
}

// failovers returns a leader kill at 1s answered 2s later, a restart
// completing at 4s, and a leader pause at 5s answered after 500ms.
func failovers() *testHistory {
	return new(testHistory).
		nemesis(OpKill, "leader:n1", msec(1000), msec(1001)).
		nemesis(OpKill, "n2", msec(1100), msec(1101)). // not the leader: no failover
		allow("c1", "tb", msec(1200), msec(1300), 3, 1).
		grant("c1", "tb", 1, msec(1500), msec(3000), 1, 5, time.Second).
		nemesis(OpRestart, "n1,n2", msec(3900), msec(4000)).
		nemesis(OpPause, "leader:n3", msec(5000), msec(5001)).
		grant("c1", "tb", 2, msec(5100), msec(5500), 2, 5, time.Second)
}

func TestAvailabilityMetrics(t *testing.T) {
	h := failovers().allows(20, "c2", "sw", msec(0), msec(2000), 0)
	r := CheckAvailability(h.events, testKeys, Options{})
	requireValid(t, r)
	want := map[string]float64{
		"failovers":                  2,
		"failover_p50_ms":            500,
		"failover_max_ms":            2000,
		"failover_unended":           0,
		"failover_admissions":        21, // the allow at 1.3s and the 20 at 2s
		"failover_leased_admissions": 1,
		"recovery_ms":                1500,
		"efficiency:sw":              20.0 / (10 + 10*2),
	}
	for k, v := range want {
		if got, ok := r.Metrics[k]; !ok || math.Abs(got-v) > 1e-9 {
			t.Errorf("metric %s = %v (present %v), want %v", k, got, ok, v)
		}
	}
	if len(r.Details) != 3 {
		t.Errorf("details = %q, want two failovers and the recovery", r.Details)
	}
}

func TestEnvelopeMetrics(t *testing.T) {
	// 20 at one instant is exactly B + r·Λ: ratio 1, nothing over.
	h := new(testHistory).allows(20, "c1", "tb", msec(1000), msec(1000), 0)
	r := CheckAdmissions(h.events, testKeys, Options{})
	requireValid(t, r)
	if got := r.Metrics["max_ratio"]; math.Abs(got-1) > 1e-9 {
		t.Errorf("max_ratio = %v, want 1", got)
	}
	if got := r.Metrics["over_admitted"]; got != 0 {
		t.Errorf("over_admitted = %v, want 0", got)
	}
	// Two more: 22 against 20.
	h.allows(2, "c1", "tb", msec(1000), msec(1000), 0)
	r = CheckAdmissions(h.events, testKeys, Options{})
	if got := r.Metrics["over_admitted"]; math.Abs(got-2) > 1e-9 {
		t.Errorf("over_admitted = %v, want 2", got)
	}
	if got := r.Metrics["max_ratio:tb"]; math.Abs(got-1.1) > 1e-9 {
		t.Errorf("max_ratio:tb = %v, want 1.1", got)
	}
	// The largest ratio is in a short window even when a long one has the
	// largest excess: 20 at 0 then 8 tokens per second for 10s on tb.
	h = new(testHistory).allows(20, "c1", "tb", 0, 0, 0)
	for i := 1; i <= 80; i++ {
		h.allow("c1", "tb", int64(i)*msec(125), int64(i)*msec(125), 0, 1)
	}
	r = CheckAdmissions(h.events, testKeys, Options{})
	requireValid(t, r)
	if got := r.Metrics["max_ratio"]; math.Abs(got-1) > 1e-9 {
		t.Errorf("max_ratio = %v, want 1 (the instant at 0)", got)
	}
}

func TestDurabilityWithoutOutage(t *testing.T) {
	h := new(testHistory).grant("c1", "tb", 1, msec(0), msec(1), 1, 10, time.Second)
	r := CheckDurability(h.events, testKeys, Options{})
	requireValid(t, r)
	if r.Metrics["outages"] != 0 {
		t.Errorf("outages = %v, want 0", r.Metrics["outages"])
	}
	// With Options.Nodes naming a node never killed, a kill of n1..n3 is
	// not a full outage.
	h = resetAfterRestart(10)
	r = CheckDurability(h.events, testKeys, Options{Nodes: []string{"n1", "n2", "n3", "n4"}})
	requireValid(t, r)
}

func TestCheckAllAndValid(t *testing.T) {
	good := new(testHistory).grant("c1", "tb", 1, msec(0), msec(1), 1, 5, time.Second).
		allows(5, "c1", "tb", msec(10), msec(11), 1)
	results := CheckAll(good.events, testKeys, Options{})
	names := []string{"history", "admissions", "grants", "lease-expiry", "lease-budget", "idempotency", "durability", "log-time", "availability", "budget"}
	if len(results) != len(names) {
		t.Fatalf("CheckAll returned %d results, want %d", len(results), len(names))
	}
	for i, r := range results {
		if r.Name != names[i] {
			t.Errorf("result %d is %q, want %q", i, r.Name, names[i])
		}
		requireValid(t, r)
	}
	if !Valid(results) {
		t.Error("Valid = false for a good history")
	}
	bad := good.allow("c1", "tb", msec(20), msec(21), 1, 1)
	results = CheckAll(bad.events, testKeys, Options{})
	if Valid(results) {
		t.Error("Valid = true for an over-spent lease")
	}
	// Bad keys make every checker fail, never pass silently.
	results = CheckAll(good.events, []KeySpec{{Key: "tb", Algorithm: "leaky"}}, Options{})
	for _, r := range results {
		if r.Valid {
			t.Errorf("%s: valid with an invalid key spec", r.Name)
		}
	}
}

// Many violations: all counted, the first maxViolations described.
func TestViolationsTruncated(t *testing.T) {
	h := new(testHistory)
	for i := range 50 {
		h.allow("c1", "tb", msec(float64(i)), msec(float64(i)+1), uint64(100+i), 1)
	}
	r := CheckLeaseExpiry(h.events, testKeys, Options{})
	if len(r.Violations) != maxViolations || r.Metrics["violations"] != 50 {
		t.Errorf("violations described %d, counted %v; want %d and 50", len(r.Violations), r.Metrics["violations"], maxViolations)
	}
}

// A group's efficiency is reported for the group as a whole (its keys' sums),
// not per key, and counts in the overall figure.
func TestAvailabilityGroupEfficiency(t *testing.T) {
	keys := []KeySpec{
		{Key: "g-0", Algorithm: AlgorithmTokenBucket, Limit: 10, Period: time.Second, Burst: 10, Group: "g"},
		{Key: "g-1", Algorithm: AlgorithmTokenBucket, Limit: 10, Period: time.Second, Burst: 10, Group: "g"},
	}
	// Over 1s each key allows B + r·1s = 20: 10 and 30 admitted of 40.
	h := new(testHistory).allows(10, "c1", "g-0", msec(0), msec(1000), 0).allows(30, "c1", "g-1", msec(0), msec(1000), 0)
	r := CheckAvailability(h.events, keys, Options{})
	if got := r.Metrics["efficiency:group:g"]; math.Abs(got-1) > 1e-9 {
		t.Errorf("efficiency:group:g = %v, want (10+30)/(20+20) = 1", got)
	}
	for _, k := range keys {
		if _, ok := r.Metrics["efficiency:"+k.Key]; ok {
			t.Errorf("a per-key efficiency for %s, a key of a group", k.Key)
		}
	}
	if got := r.Metrics["efficiency"]; math.Abs(got-1) > 1e-9 {
		t.Errorf("efficiency = %v, want 1 (the group counts)", got)
	}
	if !strings.Contains(r.Summary, "group g 1.000") {
		t.Errorf("summary %q does not report the group", r.Summary)
	}
}
