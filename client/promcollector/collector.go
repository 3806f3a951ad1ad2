// Package promcollector exports what a leasehold Client's Limiters and
// Budgets do as Prometheus metrics: a [prometheus.Collector] that reads
// [client.Client.Stats] at each scrape, so the SDK's request path pays for
// atomic counters only and never for Prometheus.
//
// It is a package of its own so that a program that does not use
// Prometheus does not link client_golang: package client imports nothing
// of Prometheus, nor anything of the cluster.
//
// Every metric is named leasehold_client_*. Labels are bounded: sources,
// reasons, calls, kinds and states are fixed sets, and a key is a label
// only for the keys listed in [Config.Keys] (at most [MaxKeys]).
package promcollector

import (
	"errors"
	"fmt"
	"slices"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/model"

	"github.com/leasehold/leasehold/client"
)

// MaxKeys is the most keys Config.Keys may list: each costs 8 series.
const MaxKeys = 64

// Config configures a Collector.
type Config struct {
	// Keys lists the keys whose Limiters get series of their own, labelled
	// key: state, lease time left, tokens held and time in fallback. At
	// most MaxKeys, each once; a key with no Limiter at a scrape (not made
	// yet, or closed or forgotten) has no series in it. Default none: a key
	// can be anything a caller sends, and an unbounded label would let
	// traffic grow the scrape without bound.
	Keys []string
	// ConstLabels are added to every metric, such as the service's name.
	// Their names must be valid label names, not "key" nor a name the
	// metrics use.
	ConstLabels prometheus.Labels
}

// DefaultConfig returns a Config with no per-key series and no constant
// labels.
func DefaultConfig() Config { return Config{} }

// reserved are the label names the metrics use.
var reserved = []string{"key", "source", "reason", "call", "kind", "state", "result", "how"}

// Validate reports every problem with c.
func (c Config) Validate() error {
	var errs []error
	if len(c.Keys) > MaxKeys {
		errs = append(errs, fmt.Errorf("promcollector: %d keys listed; at most %d", len(c.Keys), MaxKeys))
	}
	for i, k := range c.Keys {
		switch {
		case k == "":
			errs = append(errs, fmt.Errorf("promcollector: key %d is empty", i))
		case slices.Contains(c.Keys[:i], k):
			errs = append(errs, fmt.Errorf("promcollector: key %q is listed twice", k))
		}
	}
	for name := range c.ConstLabels {
		switch {
		case !model.LegacyValidation.IsValidLabelName(name):
			errs = append(errs, fmt.Errorf("promcollector: constant label %q is not a valid label name", name))
		case slices.Contains(reserved, name):
			errs = append(errs, fmt.Errorf("promcollector: constant label %q is a label of the metrics", name))
		}
	}
	return errors.Join(errs...)
}

// A Collector is a prometheus.Collector of one Client's Stats. Register it
// with a registry of the application's; it is safe for concurrent scrapes.
type Collector struct {
	c    *client.Client
	keys []string

	admissions, denials, requests, requestErrors          *prometheus.Desc
	fallbackSeconds, reservations, ended, charged         *prometheus.Desc
	expired, forgiven                                     *prometheus.Desc
	limiters, budgets, leases, tokens, timeLeft           *prometheus.Desc
	keyState, keyTimeLeft, keyTokens, keyFallbackDuration *prometheus.Desc
}

// New returns a Collector of c's Stats, or cfg's problems.
func New(c *client.Client, cfg Config) (*Collector, error) {
	if c == nil {
		return nil, errors.New("promcollector: nil Client")
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("leasehold_client_"+name, help, labels, cfg.ConstLabels)
	}
	return &Collector{
		c:    c,
		keys: slices.Clone(cfg.Keys),

		admissions: d("admitted_tokens_total",
			"Tokens Allow, AllowN, TakeN, Wait and WaitN admitted, by where they came from: leased (a lease held), central (a decision of the cluster), fallback (the failure policy while the cluster was unreachable).",
			"source"),
		denials: d("denials_total",
			"Allow, AllowN and TakeN calls that returned false, by reason: cluster (the cluster said no, now or recently), unreachable (no answer, or the cluster full at its --max-keys or --max-sessions; no lease covered it, the failure policy refused), unusable (closed, invalid key or limit, more than the limit ever admits), late_answer (a central grant answered after the span it may be spent in, a sliding window's span or a token bucket's max lease, so not spent).",
			"reason"),
		requests: d("requests_total",
			"Requests sent to the cluster, by call, each counted once however often retried.",
			"call"),
		requestErrors: d("request_errors_total",
			"Requests to the cluster that ended in an error, by call and kind: rejected (retrying cannot help) or unavailable (no answer in time).",
			"call", "kind"),
		fallbackSeconds: d("fallback_seconds_total",
			"Time Limiters spent following their failure policy, summed over Limiters, counted when each episode ends (the cluster answers, or the Limiter is closed)."),
		reservations: d("reservations_total",
			"Budget Reserve and TryReserve calls, by result: reserved or refused (any error).",
			"result"),
		ended: d("reservations_ended_total",
			"Budget reservations ended, by how: settled or canceled.",
			"how"),
		expired: d("reservations_expired_total",
			"Budget reservations settled or canceled after their lease had ended (ErrExpired): their unused tokens stayed charged."),
		charged: d("settle_charged_tokens_total",
			"Tokens Settle charged to the cluster as debt: used beyond a reservation, and not covered by a lease held."),
		forgiven: d("settle_forgiven_tokens_total",
			"Tokens used beyond a reservation that the cluster did not charge, as the rule's key owed its max debt already: used, and not limited."),
		limiters: d("limiters",
			"Limiters of the Client by state (Budgets' rules not included).",
			"state"),
		budgets: d("budgets", "Open Budgets."),
		leases: d("leases_held",
			"Valid leases held, over Limiters and Budgets' rules."),
		tokens: d("lease_tokens_held",
			"Unspent tokens on the valid leases held."),
		timeLeft: d("lease_time_left_seconds",
			"The least, over the Limiters and Budgets' rules holding a lease, time left until the last of their leases expires; 0 if none is held."),
		keyState: d("key_state",
			"1 for the state the listed key's Limiter is in, 0 for the others.",
			"key", "state"),
		keyTimeLeft: d("key_lease_time_left_seconds",
			"Time left until the last lease of the listed key's Limiter expires; 0 if it holds none.",
			"key"),
		keyTokens: d("key_lease_tokens_held",
			"Unspent tokens on the valid leases of the listed key's Limiter.",
			"key"),
		keyFallbackDuration: d("key_fallback_seconds",
			"How long the failure policy has been deciding for the listed key's Limiter; 0 when it is not.",
			"key"),
	}, nil
}

// Describe sends every metric's description.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		c.admissions, c.denials, c.requests, c.requestErrors,
		c.fallbackSeconds, c.reservations, c.ended, c.expired, c.charged, c.forgiven,
		c.limiters, c.budgets, c.leases, c.tokens, c.timeLeft,
		c.keyState, c.keyTimeLeft, c.keyTokens, c.keyFallbackDuration,
	} {
		ch <- d
	}
}

// states are the Limiter states the state gauges report.
var states = []client.State{client.StateLeased, client.StateCentral, client.StateFallback, client.StateInvalid}

// Collect reads the Client's Stats, and each listed key's, and sends them.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	s := c.c.Stats()
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}

	counter(c.admissions, s.Admitted.Leased, "leased")
	counter(c.admissions, s.Admitted.Central, "central")
	counter(c.admissions, s.Admitted.Fallback, "fallback")
	counter(c.denials, s.Denied.Cluster, "cluster")
	counter(c.denials, s.Denied.Unreachable, "unreachable")
	counter(c.denials, s.Denied.Unusable, "unusable")
	counter(c.denials, s.Denied.LateAnswer, "late_answer")
	for _, call := range []struct {
		name string
		n    uint64
		errs client.ErrorKinds
	}{
		{"acquire", s.Requests.Acquire, s.Errors.Acquire},
		{"release", s.Requests.Release, s.Errors.Release},
		{"charge", s.Requests.Charge, s.Errors.Charge},
		{"extend", s.Requests.Extend, s.Errors.Extend},
		{"restrict", s.Requests.Restrict, s.Errors.Restrict},
	} {
		counter(c.requests, call.n, call.name)
		counter(c.requestErrors, call.errs.Rejected, call.name, "rejected")
		counter(c.requestErrors, call.errs.Unavailable, call.name, "unavailable")
	}
	ch <- prometheus.MustNewConstMetric(c.fallbackSeconds, prometheus.CounterValue, s.FallbackTime.Seconds())
	counter(c.reservations, s.Reserved, "reserved")
	counter(c.reservations, s.ReserveRefused, "refused")
	counter(c.ended, s.Settled, "settled")
	counter(c.ended, s.Canceled, "canceled")
	counter(c.expired, s.Expired)
	counter(c.charged, s.Charged)
	counter(c.forgiven, s.Forgiven)

	gauge(c.limiters, float64(s.Limiters.Leased), client.StateLeased.String())
	gauge(c.limiters, float64(s.Limiters.Central), client.StateCentral.String())
	gauge(c.limiters, float64(s.Limiters.Fallback), client.StateFallback.String())
	gauge(c.limiters, float64(s.Limiters.Invalid), client.StateInvalid.String())
	gauge(c.budgets, float64(s.Budgets))
	gauge(c.leases, float64(s.LeasesHeld))
	gauge(c.tokens, float64(s.TokensHeld))
	gauge(c.timeLeft, s.LeaseTimeLeft.Seconds())

	for _, key := range c.keys {
		ls, ok := c.c.LimiterStats(key)
		if !ok {
			continue
		}
		for _, st := range states {
			v := 0.0
			if ls.State == st {
				v = 1
			}
			gauge(c.keyState, v, key, st.String())
		}
		gauge(c.keyTimeLeft, ls.LeaseTimeLeft.Seconds(), key)
		gauge(c.keyTokens, float64(ls.TokensHeld), key)
		gauge(c.keyFallbackDuration, ls.InFallback.Seconds(), key)
	}
}
