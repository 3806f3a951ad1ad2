//go:build unix

package jepsen

import (
	"cmp"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"
)

// CheckLeaseExpiry checks that no client spent a lease after it expired.
//
// A lease's life is measured, as the SDK measures it, from the send of its
// request, which the grant's invoke precedes: the SDK stops spending at
// Sent + TTL·(1−ρ)/(1+ρ) on its own clock, which is before Sent + TTL on a
// clock within the design bound. So an ok allow from lease L whose invoke
// (before the SDK read its clock) is later than grant(L).invoke + TTL is a
// violation; with retries of one request the earliest invoke counts. A
// client clock that runs slow beyond the bound makes exactly this happen.
//
// An allow that names a lease no ok grant returned is a violation unless a
// grant by the same process on the same key whose outcome is unknown (info
// or incomplete) was invoked before the allow completed; it is then checked
// against that grant's invoke + MaxLease. A grant whose TTL exceeds the
// key's MaxLease is a violation too, as the bound of CheckAdmissions rests
// on it. Metrics: leased (admissions from leases), min_margin_ms (the
// least time left on a lease when it was spent).
func CheckLeaseExpiry(events []Event, keys []KeySpec, opts Options) Result {
	return analyze(events, keys, opts).leaseExpiry()
}

// CheckLeaseBudget checks each lease's accounting: the tokens admitted from
// it plus those its release gave back (the largest N of its release
// operations, whatever their outcome, since the client marks a lease dead
// before releasing it) are at most the tokens granted; it belongs to one
// process and one key, and only that process spends it; and nothing is
// spent from it after a release of it completed. Metrics: leases, spent,
// released.
func CheckLeaseBudget(events []Event, keys []KeySpec, opts Options) Result {
	return analyze(events, keys, opts).leaseBudget()
}

// CheckIdempotency checks that no request was applied twice: all ok grants
// of one request (ClientID, Seq) carry the same answer (lease id, tokens,
// key), and every lease id is granted to one request only. Grants without a
// ClientID cannot be told apart and are only counted. Metrics: requests,
// retried (requests answered more than once), unidentified.
func CheckIdempotency(events []Event, keys []KeySpec, opts Options) Result {
	return analyze(events, keys, opts).idempotency()
}

// leaseStart returns when a lease's life began at the earliest, and its
// TTL (the smallest, should its grants disagree).
func leaseStart(recs []*grantRec) (start, ttl int64) {
	start, ttl = maxTime, maxTime
	for _, r := range recs {
		start = min(start, r.s)
		ttl = min(ttl, r.ttl)
	}
	return start, ttl
}

func (an *analysis) leaseExpiry() Result {
	b := newResultBuilder("lease-expiry")
	b.setup(an)
	for _, g := range an.grantRecs {
		if k, ok := an.keys[g.key]; ok && g.lease != 0 && g.ttl > int64(k.MaxLease) {
			b.violate("lease %d of key %q granted to %s at %s with ttl %v, beyond the key's MaxLease %v",
				g.lease, g.key, g.process, an.at(g.s), time.Duration(g.ttl), k.MaxLease)
		}
	}
	// Grants whose outcome is unknown, by process and key.
	type pk struct{ process, key string }
	unresolved := make(map[pk][]int64) // invoke times, ascending
	for _, o := range an.grants {
		if o.Unknown() {
			k := pk{o.Process, o.Invoke.Key}
			unresolved[k] = append(unresolved[k], o.Invoke.Time)
		}
	}
	leased := 0
	margin := int64(maxTime)
	for _, o := range an.allows {
		if !o.OK() || o.Complete.Lease == 0 {
			continue
		}
		leased++
		id, t := o.Complete.Lease, o.Invoke.Time
		if recs := an.leases[id]; len(recs) > 0 {
			start, ttl := leaseStart(recs)
			deadline := start + ttl
			margin = min(margin, deadline-t)
			if t > deadline {
				b.violate("%s spent lease %d (key %q) at %s, %v after it expired at %s (granted at %s, ttl %v)",
					o.Process, id, o.Invoke.Key, an.at(t), time.Duration(t-deadline), an.at(deadline), an.at(start), time.Duration(ttl))
			}
			continue
		}
		times := unresolved[pk{o.Process, o.Invoke.Key}]
		i := len(times)
		for i > 0 && times[i-1] > o.Complete.Time {
			i--
		}
		if i == 0 {
			b.violate("%s spent lease %d (key %q) at %s, which no grant in the history returned",
				o.Process, id, o.Invoke.Key, an.at(t))
			continue
		}
		latest := times[i-1]
		if k, ok := an.keys[o.Invoke.Key]; ok && t > latest+int64(k.MaxLease) {
			b.violate("%s spent lease %d (key %q) at %s; the latest grant that could have returned it was invoked at %s, more than MaxLease %v before",
				o.Process, id, o.Invoke.Key, an.at(t), an.at(latest), k.MaxLease)
		}
	}
	b.r.Metrics["leased"] = float64(leased)
	summary := fmt.Sprintf("%d admissions from %d leases, none after expiry", leased, len(an.leases))
	if margin != maxTime {
		b.r.Metrics["min_margin_ms"] = float64(margin) / 1e6
		summary += fmt.Sprintf("; least time left %v", time.Duration(margin))
	}
	return b.done(summary)
}

func (an *analysis) leaseBudget() Result {
	b := newResultBuilder("lease-budget")
	b.setup(an)
	spends := make(map[uint64][]*Op)
	for _, o := range an.allows {
		if o.OK() && o.Complete.Lease != 0 {
			spends[o.Complete.Lease] = append(spends[o.Complete.Lease], o)
		}
	}
	releases := make(map[uint64][]*Op)
	for _, o := range an.releases {
		releases[o.Invoke.Lease] = append(releases[o.Invoke.Lease], o)
	}
	ids := make([]uint64, 0, len(an.leases))
	for id := range an.leases {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	var totalSpent, totalReleased int64
	for _, id := range ids {
		recs := an.leases[id]
		owner, key := recs[0].process, recs[0].key
		granted := int64(math.MaxInt64)
		var owners []string
		for _, r := range recs {
			granted = min(granted, r.n)
			if !slices.Contains(owners, r.process) {
				owners = append(owners, r.process)
			}
			if r.key != key {
				b.violate("lease %d granted for two keys, %q and %q", id, key, r.key)
			}
		}
		if len(owners) > 1 {
			b.violate("lease %d granted to more than one process: %s", id, strings.Join(owners, ", "))
		}
		released := int64(0)
		releasedAt := maxTime
		for _, o := range releases[id] {
			released = max(released, o.Invoke.N)
			if o.Done {
				releasedAt = min(releasedAt, o.Complete.Time)
			}
		}
		spent := int64(0)
		for _, o := range spends[id] {
			spent += allowTokens(o)
			if o.Process != owner {
				b.violate("%s spent lease %d at %s, which was granted to %s", o.Process, id, an.at(o.Invoke.Time), owner)
			}
			if o.Invoke.Key != key {
				b.violate("%s spent lease %d of key %q on key %q at %s", o.Process, id, key, o.Invoke.Key, an.at(o.Invoke.Time))
			}
			if o.Invoke.Time > releasedAt {
				b.violate("%s spent lease %d at %s, after its release completed at %s", o.Process, id, an.at(o.Invoke.Time), an.at(releasedAt))
			}
		}
		if spent+released > granted {
			b.violate("lease %d (key %q, %s): %d tokens spent + %d released > %d granted",
				id, key, owner, spent, released, granted)
		}
		totalSpent += spent
		totalReleased += released
	}
	b.r.Metrics["leases"] = float64(len(ids))
	b.r.Metrics["spent"] = float64(totalSpent)
	b.r.Metrics["released"] = float64(totalReleased)
	return b.done(fmt.Sprintf("%d leases: %d tokens spent and %d released, each lease within its grant", len(ids), totalSpent, totalReleased))
}

func (an *analysis) idempotency() Result {
	b := newResultBuilder("idempotency")
	b.setup(an)
	type request struct {
		client string
		seq    uint64
	}
	byRequest := make(map[request][]*grantRec)
	var order []request
	unidentified, retried := 0, 0
	for _, g := range an.grantRecs {
		if g.client == "" {
			unidentified++
			continue
		}
		r := request{g.client, g.seq}
		if _, ok := byRequest[r]; !ok {
			order = append(order, r)
		}
		byRequest[r] = append(byRequest[r], g)
		if len(g.ops) > 1 {
			retried++
		}
	}
	describe := func(g *grantRec) string {
		return fmt.Sprintf("lease %d of %d tokens (key %q) at %s", g.lease, g.n, g.key, an.at(g.s))
	}
	for _, r := range order {
		recs := byRequest[r]
		for _, g := range recs[1:] {
			b.violate("request %s/%d applied twice: %s and %s", r.client, r.seq, describe(recs[0]), describe(g))
		}
	}
	ids := make([]uint64, 0, len(an.leases))
	for id := range an.leases {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		recs := slices.Clone(an.leases[id])
		slices.SortFunc(recs, func(x, y *grantRec) int { return cmp.Compare(x.s, y.s) })
		for _, g := range recs[1:] {
			if g.client == "" || g.client != recs[0].client || g.seq != recs[0].seq {
				b.violate("lease %d granted twice: to %s/%d at %s and to %s/%d at %s",
					id, recs[0].client, recs[0].seq, an.at(recs[0].s), g.client, g.seq, an.at(g.s))
			}
		}
	}
	b.r.Metrics["requests"] = float64(len(order))
	b.r.Metrics["retried"] = float64(retried)
	b.r.Metrics["unidentified"] = float64(unidentified)
	return b.done(fmt.Sprintf("%d granted requests, each applied once (%d answered more than once, %d without a client id)", len(order), retried, unidentified))
}
