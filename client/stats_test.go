package client_test

import (
	"fmt"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/leasehold/leasehold/client"
	"github.com/leasehold/leasehold/client/promcollector"
)

// statsSequence runs a known sequence of calls against f through c: leased,
// central and fallback admissions, denials of each reason, reservations
// settled, canceled and refused, and a Close. The want* constants below are
// what it must count.
func statsSequence(t *testing.T, f *fakeCluster, c *client.Client) {
	t.Helper()
	ctx := t.Context()

	// 15 tokens from leases: the first Allow asks for a lease.
	l := client.LeasingForTest(c.Limiter("leased", client.Limit{Rate: 1000, Per: time.Second}))
	for i := range 10 {
		if !l.Allow() {
			t.Fatalf("leased Allow #%d = false", i+1)
		}
	}
	if !l.AllowN(5) {
		t.Fatal("leased AllowN(5) = false")
	}

	// A new Limiter decides centrally: one token, then the cluster's no,
	// then that no remembered.
	ce := c.Limiter("central", client.Limit{Rate: 1, Per: time.Hour})
	if !ce.Allow() {
		t.Fatal("first central Allow = false")
	}
	for i := range 2 {
		if ce.Allow() {
			t.Fatalf("central Allow #%d past the limit = true", i+2)
		}
	}

	// An invalid key admits nothing, and sends nothing.
	if c.Limiter("", client.Limit{Rate: 1, Per: time.Second}).Allow() {
		t.Fatal("Allow on an invalid key = true")
	}

	// The cluster goes away: a FailOpen Limiter admits 3 tokens by its
	// policy, a FailClosed one refuses.
	f.set(func(f *fakeCluster) { f.mu.down = true })
	open := c.Limiter("open", client.Limit{Rate: 10, Per: time.Second, FailurePolicy: client.FailOpen})
	if !open.AllowN(3) {
		t.Fatal("FailOpen AllowN(3) with the cluster down = false")
	}
	closed := client.LeasingForTest(c.Limiter("closed", client.Limit{Rate: 10, Per: time.Second, FailurePolicy: client.FailClosed}))
	if closed.Allow() {
		t.Fatal("FailClosed Allow with the cluster down = true")
	}
	if got := open.State(); got != client.StateFallback {
		t.Fatalf("FailOpen Limiter's State = %v, want fallback", got)
	}
	before, ok := c.LimiterStats("open")
	if !ok || before.State != client.StateFallback {
		t.Fatalf("LimiterStats(open) = %+v, %v; want fallback", before, ok)
	}
	time.Sleep(3 * time.Second)
	if ls, _ := c.LimiterStats("open"); ls.InFallback != before.InFallback+3*time.Second {
		t.Fatalf("LimiterStats(open).InFallback = %v 3s after %v", ls.InFallback, before.InFallback)
	}
	// The cluster is back: a FailClosed Wait gets its token from the
	// cluster, and its fallback ends. Its demand is too low by now for a
	// lease: a central decision. Nothing calls the FailOpen Limiter: it
	// stays in fallback.
	f.set(func(f *fakeCluster) { f.mu.down = false })
	if err := closed.Wait(ctx); err != nil {
		t.Fatal(err)
	}

	// Budget: three reservations settled below their cost, one canceled,
	// one refused (more than a rule ever admits).
	b := client.BudgetLeasingForTest(c.Budget("s", bigRules()...))
	used := client.Cost{Requests: 1, InputTokens: 1187, OutputTokens: 342}
	for range 3 {
		r, err := b.Reserve(ctx, call)
		if err != nil {
			t.Fatal(err)
		}
		if err := r.Settle(ctx, used); err != nil {
			t.Fatal(err)
		}
	}
	r, err := b.TryReserve(call)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Cancel(); err != nil {
		t.Fatal(err)
	}
	if _, err := b.TryReserve(client.Cost{Requests: 1, OutputTokens: 1 << 40}); err == nil {
		t.Fatal("TryReserve of more than a rule ever admits: nil error")
	}
}

// What statsSequence counts, where it does not depend on background
// refreshes.
const (
	wantLeased, wantCentral, wantFallback = 15, 2, 3
	wantDeniedCluster                     = 2
	wantDeniedUnreachable                 = 1
	wantDeniedUnusable                    = 1
	wantReserved, wantRefused             = 4, 1
	wantSettled, wantCanceled             = 3, 1
)

// Stats counts a known sequence of calls exactly: admitted tokens by
// source, denials by reason, reservations, and requests as the cluster
// received them.
func TestStatsCountsAKnownSequence(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 1)
		c := f.dial(t)
		statsSequence(t, f, c)
		want := client.BySource{Leased: wantLeased, Central: wantCentral, Fallback: wantFallback}
		s := c.Stats()
		if s.Admitted != want {
			t.Errorf("Admitted = %+v, want %+v", s.Admitted, want)
		}
		if want := (client.Denials{Cluster: wantDeniedCluster, Unreachable: wantDeniedUnreachable, Unusable: wantDeniedUnusable}); s.Denied != want {
			t.Errorf("Denied = %+v, want %+v", s.Denied, want)
		}
		if s.Reserved != wantReserved || s.ReserveRefused != wantRefused || s.Settled != wantSettled || s.Canceled != wantCanceled {
			t.Errorf("Reserved, ReserveRefused, Settled, Canceled = %d, %d, %d, %d; want %d, %d, %d, %d",
				s.Reserved, s.ReserveRefused, s.Settled, s.Canceled, wantReserved, wantRefused, wantSettled, wantCanceled)
		}
		if s.FallbackTime < 3*time.Second {
			t.Errorf("FallbackTime = %v, want at least the 3s the cluster was down", s.FallbackTime)
		}
		if want := (client.LimiterStates{Leased: 1, Central: 2, Fallback: 1, Invalid: 1}); s.Limiters != want {
			t.Errorf("Limiters = %+v, want %+v", s.Limiters, want)
		}
		if s.Budgets != 1 || s.LeasesHeld == 0 || s.TokensHeld == 0 || s.LeaseTimeLeft <= 0 {
			t.Errorf("gauges = %+v, %d budgets, %d leases of %d tokens, %v left; want 1 invalid Limiter, 1 Budget, leases held",
				s.Limiters, s.Budgets, s.LeasesHeld, s.TokensHeld, s.LeaseTimeLeft)
		}

		// Every request the cluster saw, once however often it was tried.
		seqs := map[uint64]bool{}
		for _, a := range f.acquires() {
			seqs[a.req.GetSeq()] = true
		}
		releases, charges := len(f.releases()), len(f.charges())
		if s.Requests.Acquire != uint64(len(seqs)) || s.Errors.Acquire.Unavailable == 0 || s.Errors.Acquire.Rejected != 0 {
			t.Errorf("Requests.Acquire = %d, Errors.Acquire = %+v; want the %d the cluster saw, some unavailable, none rejected",
				s.Requests.Acquire, s.Errors.Acquire, len(seqs))
		}
		if s.Requests.Release != uint64(releases) || s.Requests.Charge != uint64(charges) {
			t.Errorf("Requests = %+v; want %d releases, %d charges", s.Requests, releases, charges)
		}

		// What a lease gave stays counted once it is dropped (the 15 tokens'
		// lease expired during the fallback: the next call drops it) and
		// once its Limiter is closed.
		if !c.Limiter("leased", client.Limit{Rate: 1000, Per: time.Second}).Allow() {
			t.Fatal("Allow on the Limiter whose lease expired = false")
		}
		short := client.LeasingForTest(c.Limiter("short", client.Limit{Rate: 1000, Per: time.Second}))
		for range 5 {
			if !short.Allow() {
				t.Fatal("Allow on a new Limiter = false")
			}
		}
		if err := short.Close(); err != nil {
			t.Fatal(err)
		}
		before := s.Admitted
		s = c.Stats()
		if s.Admitted.Leased < before.Leased+5 || s.Admitted.Leased+s.Admitted.Central != before.Leased+before.Central+6 {
			t.Errorf("Admitted = %+v after 6 more tokens (5 from a lease) on %+v", s.Admitted, before)
		}

		// Close gives back every lease: the tokens spent from them stay
		// counted, and the releases are counted.
		before = s.Admitted
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
		s = c.Stats()
		if s.Admitted != before {
			t.Errorf("after Close, Admitted = %+v, want %+v", s.Admitted, before)
		}
		if s.Requests.Release != uint64(len(f.releases())) || s.Requests.Release == 0 || s.LeasesHeld != 0 {
			t.Errorf("after Close, Requests.Release = %d, leases held %d; want the cluster's %d, none held",
				s.Requests.Release, s.LeasesHeld, len(f.releases()))
		}
	})
}

// The collector exports the same sequence's counts, under bounded labels,
// and a listed key's own series.
func TestPromCollectorAfterAKnownSequence(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 1)
		c := f.dial(t)
		col, err := promcollector.New(c, promcollector.Config{Keys: []string{"leased", "never-made"},
			ConstLabels: prometheus.Labels{"service": "test"}})
		if err != nil {
			t.Fatal(err)
		}
		reg := prometheus.NewPedanticRegistry()
		reg.MustRegister(col)
		statsSequence(t, f, c)

		want := fmt.Sprintf(`
# HELP leasehold_client_admitted_tokens_total %s
# TYPE leasehold_client_admitted_tokens_total counter
leasehold_client_admitted_tokens_total{service="test",source="central"} %d
leasehold_client_admitted_tokens_total{service="test",source="fallback"} %d
leasehold_client_admitted_tokens_total{service="test",source="leased"} %d
# HELP leasehold_client_denials_total %s
# TYPE leasehold_client_denials_total counter
leasehold_client_denials_total{reason="cluster",service="test"} %d
leasehold_client_denials_total{reason="late_answer",service="test"} 0
leasehold_client_denials_total{reason="unreachable",service="test"} %d
leasehold_client_denials_total{reason="unusable",service="test"} %d
# HELP leasehold_client_reservations_total %s
# TYPE leasehold_client_reservations_total counter
leasehold_client_reservations_total{result="refused",service="test"} %d
leasehold_client_reservations_total{result="reserved",service="test"} %d
# HELP leasehold_client_reservations_ended_total %s
# TYPE leasehold_client_reservations_ended_total counter
leasehold_client_reservations_ended_total{how="canceled",service="test"} %d
leasehold_client_reservations_ended_total{how="settled",service="test"} %d
# HELP leasehold_client_limiters %s
# TYPE leasehold_client_limiters gauge
leasehold_client_limiters{service="test",state="central"} 2
leasehold_client_limiters{service="test",state="fallback"} 1
leasehold_client_limiters{service="test",state="invalid"} 1
leasehold_client_limiters{service="test",state="leased"} 1
`,
			help(t, reg, "leasehold_client_admitted_tokens_total"), wantCentral, wantFallback, wantLeased,
			help(t, reg, "leasehold_client_denials_total"), wantDeniedCluster, wantDeniedUnreachable, wantDeniedUnusable,
			help(t, reg, "leasehold_client_reservations_total"), wantRefused, wantReserved,
			help(t, reg, "leasehold_client_reservations_ended_total"), wantCanceled, wantSettled,
			help(t, reg, "leasehold_client_limiters"))
		names := []string{"leasehold_client_admitted_tokens_total", "leasehold_client_denials_total",
			"leasehold_client_reservations_total", "leasehold_client_reservations_ended_total", "leasehold_client_limiters"}
		if err := testutil.GatherAndCompare(reg, strings.NewReader(want), names...); err != nil {
			t.Error(err)
		}
		// The checker catches a count off by one.
		bad := strings.Replace(want, fmt.Sprintf(`source="leased"} %d`, wantLeased), fmt.Sprintf(`source="leased"} %d`, wantLeased+1), 1)
		if err := testutil.GatherAndCompare(reg, strings.NewReader(bad), names...); err == nil {
			t.Error("GatherAndCompare accepted a leased count off by one")
		}

		// Requests as the cluster saw them.
		s := c.Stats()
		if got := testutil.ToFloat64(metric(t, reg, "leasehold_client_requests_total", "call", "acquire")); got != float64(s.Requests.Acquire) {
			t.Errorf("requests_total{call=acquire} = %v, want %d", got, s.Requests.Acquire)
		}
		if got := testutil.ToFloat64(metric(t, reg, "leasehold_client_request_errors_total", "call", "acquire", "kind", "unavailable")); got == 0 ||
			uint64(got) != s.Errors.Acquire.Unavailable {
			t.Errorf("request_errors_total{call=acquire,kind=unavailable} = %v, want %d (> 0)", got, s.Errors.Acquire.Unavailable)
		}

		// The listed key has its own series; the key never made has none,
		// and no other key appears.
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		keys := map[string]bool{}
		for _, mf := range mfs {
			for _, m := range mf.GetMetric() {
				for _, lp := range m.GetLabel() {
					if lp.GetName() == "key" {
						keys[lp.GetValue()] = true
					}
				}
			}
		}
		if len(keys) != 1 || !keys["leased"] {
			t.Errorf("key labels %v; want only the listed key that has a Limiter, leased", keys)
		}
		if n := testutil.CollectAndCount(col, "leasehold_client_key_state"); n != 4 {
			t.Errorf("%d key_state series, want 4 (one key, four states)", n)
		}

		// Names, units and help follow Prometheus' conventions.
		problems, err := testutil.CollectAndLint(col)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range problems {
			t.Errorf("lint: %s: %s", p.Metric, p.Text)
		}
	})
}

// help returns name's help text as reg describes it.
func help(t *testing.T, reg *prometheus.Registry, name string) string {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetHelp()
		}
	}
	t.Fatalf("no metric %s", name)
	return ""
}

// metric returns the gathered series of name with the label pairs given,
// as a prometheus.Collector for testutil.ToFloat64.
func metric(t *testing.T, reg *prometheus.Registry, name string, pairs ...string) prometheus.Collector {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, lp := range m.GetLabel() {
				labels[lp.GetName()] = lp.GetValue()
			}
			for i := 0; i+1 < len(pairs); i += 2 {
				if labels[pairs[i]] != pairs[i+1] {
					continue next
				}
			}
			v := m.GetCounter().GetValue()
			return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name}, func() float64 { return v })
		}
	}
	t.Fatalf("no series %s%v", name, pairs)
	return nil
}

// Config.Validate reports every problem at once.
func TestPromCollectorConfigValidate(t *testing.T) {
	keys := make([]string, promcollector.MaxKeys+1)
	for i := range keys {
		keys[i] = fmt.Sprint("k", i)
	}
	keys[1] = ""
	keys[2] = "k0"
	err := promcollector.Config{Keys: keys, ConstLabels: prometheus.Labels{"key": "x", "bad-name": "y"}}.Validate()
	if err == nil {
		t.Fatal("Validate = nil")
	}
	for _, want := range []string{"at most 64", "key 1 is empty", `"k0" is listed twice`, `"key" is a label`, `"bad-name" is not a valid`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Validate = %v; want it to say %q", err, want)
		}
	}
	if err := promcollector.DefaultConfig().Validate(); err != nil {
		t.Errorf("DefaultConfig().Validate() = %v", err)
	}
}
