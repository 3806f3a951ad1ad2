package client_test

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/leasehold/leasehold/client"
)

// tightRules: requests, input and output tokens a second that the
// concurrency test's callers ask well above, and a debt cap no settle
// reaches (so that nothing is forgiven and the books balance exactly).
func tightRules() []client.Rule {
	const lease = time.Minute // no lease ends during a test
	return []client.Rule{
		{Counts: client.Requests, Limit: client.Limit{Rate: 200, Per: time.Second, MaxLease: lease}, MaxDebt: 1 << 40},
		{Counts: client.InputTokens, Limit: client.Limit{Rate: 20_000, Per: time.Second, MaxLease: lease}, MaxDebt: 1 << 40},
		{Counts: client.OutputTokens, Limit: client.Limit{Rate: 30_000, Per: time.Second, MaxLease: lease}, MaxDebt: 1 << 40},
	}
}

// A reservation that fits one rule and not another takes from neither:
// centrally (the reservation's own Acquire is all or nothing) and on the
// pool path (what one rule's lease gave is put back when another falls
// short).
func TestAllOrNothingAcrossRules(t *testing.T) {
	rules := []client.Rule{
		{Counts: client.Requests, Limit: client.Limit{Rate: 100_000, Per: time.Minute}},
		{Counts: client.OutputTokens, Limit: client.Limit{Rate: 1000, Per: time.Minute}},
	}
	for _, leasing := range []bool{false, true} {
		t.Run(fmt.Sprintf("leasing=%v", leasing), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				f := newFake(t, 1)
				b := f.dial(t).Budget("s", rules...)
				if leasing {
					client.BudgetLeasingForTest(b)
				}
				ctx := t.Context()
				r, err := b.Reserve(ctx, client.Cost{Requests: 1, OutputTokens: 900})
				if err != nil {
					t.Fatal(err)
				}
				if err := r.Settle(ctx, client.Cost{Requests: 1, OutputTokens: 900}); err != nil {
					t.Fatal(err)
				}
				// The requests rule's tokens are in the cluster or held here;
				// a refused reservation moves them at most from one to the
				// other (a refresh), and consumes none. No time passes.
				total := func() int64 { return f.level("s/requests") + client.BudgetHeldForTest(b)["s/requests"] }
				before := total()
				_, err = b.TryReserve(client.Cost{Requests: 1, OutputTokens: 900})
				var re *client.RuleError
				if !errors.As(err, &re) || re.Counts != client.OutputTokens || !errors.Is(err, client.ErrDenied) {
					t.Fatalf("TryReserve of more output tokens than are left = %v; want a denial by output-tokens", err)
				}
				if re.RetryAfter <= 0 || re.RetryAfter > time.Minute {
					t.Errorf("the denial's retry-after = %v; want when 900 have refilled", re.RetryAfter)
				}
				if after := total(); after != before {
					t.Errorf("requests in the cluster and held: %d before, %d after a reservation refused on output tokens", before, after)
				}
			})
		})
	}
}

// Under concurrency, every rule's books balance: what the cluster granted
// this client, less what it gave back, plus what it charged, is exactly what
// the settled reservations used, per rule, once the Budget is closed. A
// reservation that took from one rule and not another (a lost put-back)
// unbalances them: the known-bad variant is caught.
func TestAllOrNothingUnderConcurrency(t *testing.T) {
	for _, bad := range []bool{false, true} {
		t.Run(fmt.Sprintf("known-bad=%v", bad), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				f := newFake(t, 1)
				c := f.dial(t)
				b := c.Budget("s", tightRules()...)
				if bad {
					client.BudgetBrokenUndoForTest(b, 0)
				}
				var (
					mu       sync.Mutex
					used     [3]int64
					admitted int
					refused  int
				)
				var wg sync.WaitGroup
				for w := range 8 {
					wg.Go(func() {
						rng := rand.New(rand.NewPCG(uint64(w), 7))
						for range 150 {
							cost := client.Cost{Requests: 1, InputTokens: rng.Int64N(400), OutputTokens: rng.Int64N(800)}
							r, err := b.TryReserve(cost)
							if err != nil {
								if !errors.Is(err, client.ErrDenied) {
									t.Errorf("TryReserve: %v", err)
									return
								}
								mu.Lock()
								refused++
								mu.Unlock()
								time.Sleep(time.Duration(rng.Int64N(int64(20 * time.Millisecond))))
								continue
							}
							time.Sleep(time.Duration(rng.Int64N(int64(30 * time.Millisecond))))
							if rng.IntN(5) == 0 {
								r.Cancel()
								mu.Lock()
								admitted++
								mu.Unlock()
								continue
							}
							actual := client.Cost{Requests: 1, InputTokens: rng.Int64N(cost.InputTokens + 200),
								OutputTokens: rng.Int64N(cost.OutputTokens*3/2 + 1)}
							if err := r.Settle(t.Context(), actual); err != nil {
								t.Errorf("Settle: %v", err)
							}
							mu.Lock()
							admitted++
							used[0] += actual.Requests
							used[1] += actual.InputTokens
							used[2] += actual.OutputTokens
							mu.Unlock()
						}
					})
				}
				wg.Wait()
				if err := b.Close(); err != nil {
					t.Fatal(err)
				}
				var unbalanced []string
				for i, key := range b.Keys() {
					if net := f.net(key); net != used[i] {
						unbalanced = append(unbalanced, fmt.Sprintf("%s: cluster net %d, used %d", key, net, used[i]))
					}
				}
				t.Logf("%d admitted, %d refused; %d acquires, %d releases, %d charges; unbalanced: %v",
					admitted, refused, len(f.acquires()), len(f.releases()), len(f.charges()), unbalanced)
				if admitted < 100 || refused < 100 {
					t.Errorf("admitted %d, refused %d: the load does not exercise both", admitted, refused)
				}
				switch {
				case !bad && len(unbalanced) > 0:
					t.Errorf("books do not balance: %v", unbalanced)
				case bad && len(unbalanced) == 0:
					t.Errorf("the known-bad Budget (a lost put-back) went unnoticed")
				}
			})
		})
	}
}
