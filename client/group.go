package client

import (
	"context"
	"fmt"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/leasehold/leasehold/transport"
	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

// A Budget holds two kinds of leases, each a leaseGroup: one lease (one
// Acquire) may carry several rules' keys, each item a *lease of its own.
//
//   - Pool leases: a refresh of the rules that are due, in one Acquire. Each
//     item is installed in its rule's Limiter and spent by reservations
//     until its deadline, exactly like a Limiter's lease.
//   - A reservation's own lease: the tokens of its central rules and its
//     InFlight slot, taken by one Acquire when it was reserved, spent by
//     nobody else, released when it ends.
//
// Refunds go back into the lease the tokens came from, without a lock:
// before the lease's deadline they are spent again, after it they wait for
// the lease's Release. The keeper keeps a lease alive in the cluster (an
// Extend) past its deadline while reservations that took from it are open
// and within their TTL, so a call longer than a lease still gets its unused
// tokens refunded, and releases it once they have ended. A lease's tokens are
// spent only before its deadline, never in an extension: the bound's Λ is
// unchanged (see Machine.acquire in package fsm).

// Keeper timing.
const (
	// minKeepLead is the least time before a lease's end at which the keeper
	// acts on it (an Extend must be applied before the lease expires).
	minKeepLead = 20 * time.Millisecond
	// settleRetryFor bounds how long a reservation's requests (Release,
	// Charge) are retried after it ended.
	settleRetryFor = time.Minute
)

// leaseGroup is one lease of a Budget: its id, its items and what the
// keeper needs to keep it alive and give it back.
type leaseGroup struct {
	b         *Budget
	id        uint64
	exclusive bool          // a reservation's own lease
	rec       *reservation  // exclusive: the reservation, at generation gen
	gen       uint64        //
	rules     []int         // the rule index of each item
	pieces    []*lease      // one per item, in the Acquire's order
	ttl       time.Duration // asked for with the Acquire, and with each Extend
	lead      int64         // ns before validUntil at which the keeper acts

	// keepUntil (pool leases): the keeper renews the lease until then
	// while reservations that took from it are open: its deadline plus
	// the reservation TTL, pushed back by KeepAlive.
	keepUntil atomic.Int64
	// gone: the lease has ended, or will without renewal; refunds into it
	// are lost.
	gone atomic.Bool

	mu struct {
		sync.Mutex
		ended      bool
		unused     []int64 // what each piece held when it died
		validUntil int64   // the lease is the cluster's until at least then (Client clock)
		kept       bool    // renewed past its first life at least once
		timer      *time.Timer
	}
}

// open returns how many reservations that took from a pool lease have not
// ended.
func (g *leaseGroup) open() int64 {
	var n int64
	for _, p := range g.pieces {
		for i := range p.stripes {
			n += p.stripes[i].open.Load()
		}
	}
	return n
}

// killPieces kills every piece of g (under its Limiter's lock for a pool
// lease, which spenders read) and returns what each held, summed with what
// earlier kills found.
func (g *leaseGroup) killPieces() []int64 {
	unused := make([]int64, len(g.pieces))
	for k, p := range g.pieces {
		if l := g.b.rules[g.rules[k]].lim; l != nil && !g.exclusive {
			l.mu.Lock()
			unused[k] = p.kill()
			l.mu.Unlock()
		} else {
			unused[k] = p.kill()
		}
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.mu.unused == nil {
		g.mu.unused = make([]int64, len(g.pieces))
	}
	for k := range unused {
		g.mu.unused[k] += unused[k]
	}
	return slices.Clone(g.mu.unused)
}

// end marks g ended, stops its timer and removes it from the keeper's set.
// It reports false if g had ended already.
func (g *leaseGroup) end() bool {
	g.mu.Lock()
	if g.mu.ended {
		g.mu.Unlock()
		return false
	}
	g.mu.ended = true
	if g.mu.timer != nil {
		g.mu.timer.Stop()
	}
	g.mu.Unlock()
	g.b.mu.Lock()
	delete(g.b.mu.groups, g)
	g.b.mu.Unlock()
	return true
}

// schedule runs the keeper for g at at (Client clock).
func (g *leaseGroup) schedule(at int64) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.mu.ended {
		return
	}
	d := time.Duration(max(0, at-g.b.c.now()))
	g.mu.timer = time.AfterFunc(d, func() { g.b.c.spawn(g.keep) })
}

// track adds g to the Budget's leases and schedules its keeper at at. It
// reports false if the Budget closed meanwhile (g is then not tracked).
func (b *Budget) track(g *leaseGroup, at int64) bool {
	b.mu.Lock()
	if b.mu.closed {
		b.mu.Unlock()
		return false
	}
	b.mu.groups[g] = struct{}{}
	b.mu.Unlock()
	g.schedule(at)
	return true
}

// keep runs at a lease's deadline and after each renewal: it renews the
// lease while reservations need it, and gives it back once they do not.
func (g *leaseGroup) keep() {
	b := g.b
	now := b.c.now()
	if g.exclusive {
		st := g.rec.state.Load()
		if st>>phaseBits != g.gen || st&(1<<phaseBits-1) == phasePending {
			return // ended: its Settle or Cancel gives the lease back
		}
		if now >= g.rec.keepUntil.Load() {
			g.abandon()
			return
		}
		g.extend()
		return
	}
	if g.open() == 0 {
		g.mu.Lock()
		kept := g.mu.kept
		g.mu.Unlock()
		g.release(kept)
		return
	}
	if now >= g.keepUntil.Load() {
		g.abandon()
		return
	}
	g.extend()
}

// extend renews g for its ttl, and schedules the next look.
func (g *leaseGroup) extend() {
	b := g.b
	ctx, cancel := context.WithTimeout(b.c.base, b.c.cfg.requestTimeout)
	resp, sent, err := b.c.extend(ctx, g.id, g.ttl)
	cancel()
	now := b.c.now()
	g.mu.Lock()
	validUntil := g.mu.validUntil
	g.mu.Unlock()
	switch {
	case err != nil && !rejected(err) && now+int64(minKeepLead) < validUntil:
		// Try again shortly, while the lease may still be alive.
		g.schedule(min(now+int64(jitter(1)), validUntil-int64(minKeepLead)))
	case err != nil || !resp.GetExtended():
		if err != nil {
			b.c.log.Warn("leasehold: could not keep a budget lease alive; its unused tokens are charged",
				"scope", b.scope, "lease", g.id, "err", err)
		}
		g.gone.Store(true)
		if g.end() {
			g.killPieces()
		}
	default:
		until := sent + validity(time.Duration(resp.GetTtlNs()), b.c.cfg.drift)
		g.mu.Lock()
		g.mu.validUntil = max(g.mu.validUntil, until)
		g.mu.kept = true
		g.mu.Unlock()
		g.schedule(until - g.lead)
	}
}

// release ends a pool lease whose reservations have all ended: what it
// still holds (tokens not spent before its deadline, refunds after it) goes
// back with a Release if the lease was kept past its deadline for them, or
// if it is a quarter of the grant or more (a Release is a Raft entry: a few
// tokens left over are not worth one); else the lease just expires.
func (g *leaseGroup) release(kept bool) {
	if !g.end() {
		return
	}
	g.gone.Store(true)
	unused := g.killPieces()
	worth := kept
	for k, u := range unused {
		worth = worth || u > 0 && u >= g.pieces[k].granted/4
	}
	if worth {
		g.giveBack(unused)
	}
}

// abandon ends a lease whose reservations outlived their TTL: they are
// charged as reserved. A pool lease gives back what it holds (unspent
// tokens, and refunds of the reservations that did end); a reservation's
// own lease gives back nothing but its InFlight slot.
func (g *leaseGroup) abandon() {
	if !g.end() {
		return
	}
	g.gone.Store(true)
	unused := g.killPieces()
	if g.exclusive {
		slot := false
		for k, i := range g.rules {
			if i == g.b.slot {
				slot = true
			} else {
				unused[k] = 0 // charged as reserved
			}
		}
		if !slot {
			return
		}
	}
	g.giveBack(unused)
}

// giveBack releases g with unused per item, best effort; if g held the
// InFlight slot, the process's callers waiting for a slot are woken, as a
// Settle's release wakes them, rather than left to their backoff.
func (g *leaseGroup) giveBack(unused []int64) {
	b := g.b
	ctx, cancel := context.WithTimeout(b.c.base, b.c.cfg.requestTimeout)
	defer cancel()
	if err := b.c.releaseItems(ctx, g.id, unused); err != nil {
		b.c.log.Warn("leasehold: could not give back a budget lease; its tokens return when it expires",
			"scope", b.scope, "lease", g.id, "err", err)
	}
	if slices.Contains(g.rules, b.slot) {
		b.slotFreed()
	}
}

// releaseItems gives back a lease's unused tokens per item; it retries like
// acquire.
func (c *Client) releaseItems(ctx context.Context, id uint64, unused []int64) error {
	seq := c.seqs.begin()
	defer c.seqs.end(seq)
	_, err := c.sendRelease(ctx, &pb.ReleaseRequest{ClientId: c.id, Seq: seq, LeaseId: id, Unused: unused})
	return err
}

// keepLead returns how long before a lease of the given rules ends the
// keeper acts on it: a few round trips, at least minKeepLead, at most a
// quarter of its life.
func (b *Budget) keepLead(rules []int, life int64) int64 {
	var rtt float64
	for _, i := range rules {
		if l := b.rules[i].lim; l != nil {
			l.mu.Lock()
			rtt = max(rtt, l.mu.rtt)
			l.mu.Unlock()
		}
	}
	return min(max(int64(4*rtt), int64(minKeepLead)), life/4)
}

// startRefresh starts a refresh of the Budget's pool leases unless one is
// running. A rule's Limiter calls it when one of its triggers fires.
func (b *Budget) startRefresh() {
	if b.refreshing.Load() || !b.refreshing.CompareAndSwap(false, true) {
		return
	}
	if !b.c.spawn(b.refresh) {
		b.refreshing.Store(false)
	}
}

// refresh asks the cluster, in one Acquire, for a lease on every rule that
// is due (its Limiter's plan: demand, blocked callers, low water), and
// installs the items in their Limiters. A denial is remembered by the rules
// that refused, and the others are asked again without them. It repeats
// while callers are blocked and the cluster cannot be reached, and wakes
// blocked callers when it ends. It runs on a goroutine the Client owns.
func (b *Budget) refresh() {
	defer func() {
		b.refreshing.Store(false)
		b.notify()
	}()
	for denials, failures := 0, 0; denials <= len(b.rules); {
		b.mu.Lock()
		closed := b.mu.closed
		b.mu.Unlock()
		if closed {
			return
		}
		now := b.c.now()
		var (
			items  []*pb.AcquireItem
			rules  []int
			counts []int64
			needed bool // a blocked caller needs one of the items
		)
		ttl := time.Duration(math.MaxInt64)
		for i := range b.rules {
			l := b.rules[i].lim
			if l == nil {
				continue
			}
			l.mu.Lock()
			paced := now < l.notBefore.Load()
			skip := l.mu.closed || l.mu.err != nil || paced && !l.urgentLocked() ||
				l.chooseLocked(now) && !l.mu.unreachable
			if !skip {
				if count, want, due := l.planLocked(now); due {
					if paced {
						l.mu.urgentAt = now
					}
					items = append(items, &pb.AcquireItem{Key: l.key, Count: count, Want: want, Limit: l.item})
					rules = append(rules, i)
					counts = append(counts, count)
					ttl = min(ttl, l.ttl)
					needed = needed || len(l.mu.needs) > 0
				} else {
					l.publishLocked(now)
				}
			}
			l.mu.Unlock()
		}
		if len(items) == 0 {
			return
		}
		ctx, cancel := context.WithTimeout(b.c.base, b.c.cfg.requestTimeout)
		resp, at, err := b.c.acquireItems(ctx, items, ttl, 0)
		cancel()
		recv := b.c.now()
		switch {
		case err == nil && resp.GetAllowed():
			b.install(resp, at, recv, rules, items, ttl)
			return
		case err == nil:
			b.refused(resp, at, recv, rules, counts)
			b.notify()
			denials++
			continue // ask again for the rules that did not refuse
		case rejected(err):
			b.rejectedRules(rules, err)
			return
		}
		b.failed(rules, at, recv, err)
		if !needed {
			return
		}
		// Callers are blocked and the cluster cannot be reached: let them
		// see it (their policy may admit them), back off, try again.
		b.notify()
		if err := b.c.eps.sleep(b.c.base, jitter(failures)); err != nil {
			return
		}
		failures++
	}
}

// failed records that an Acquire of rules got no answer, or a full
// cluster's refusal: each rule follows its failure policy, and they back
// off until the latest of their backoffs, the InFlight slot's too, so that
// the next Acquire asks for them together again (askAgain), not one each
// as their backoffs, jittered apart, end.
func (b *Budget) failed(rules []int, at sendTimes, recv int64, err error) {
	var until int64
	for _, i := range rules {
		l := b.rules[i].lim
		if l == nil {
			until = max(until, b.slotFailed(recv, err))
			continue
		}
		l.mu.Lock()
		l.outcomeLocked(nil, at, recv, 1, err)
		until = max(until, l.notBefore.Load())
		l.mu.Unlock()
	}
	// Under the locks, and only while the rule is still unreachable: a
	// success in between (recoverLocked) must not be left with a backoff
	// and no failure to explain it.
	for _, i := range rules {
		l := b.rules[i].lim
		if l == nil {
			b.mu.Lock()
			if b.mu.slotUnreachable {
				b.mu.slotNotBefore = max(b.mu.slotNotBefore, until)
			}
			b.mu.Unlock()
			continue
		}
		l.mu.Lock()
		if l.mu.unreachable {
			maxInt64(&l.notBefore, until)
		}
		l.mu.Unlock()
	}
}

// rejectedRules records that the cluster rejected an Acquire of rules (it
// is invalid, names no limit, or this client may not make it: rejected):
// each rule admits nothing, whatever its failure policy, as a Limiter
// whose key the cluster rejected (StateInvalid), until a reservation asks
// again after the refusal backoff, if an operator can lift the refusal
// (askRefused), and the cluster answers. A refusal is not an outage: left
// to its policy, a FailOpen InFlight rule admitted every call and sent a
// probe for each.
func (b *Budget) rejectedRules(rules []int, err error) {
	retryAt := refusalRetry(b.c.now(), err)
	for _, i := range rules {
		r := &b.rules[i]
		if l := r.lim; l != nil {
			l.mu.Lock()
			l.rejectLocked(err, retryAt)
			l.mu.Unlock()
			continue
		}
		b.mu.Lock()
		if b.mu.slotErr == nil {
			b.c.log.Warn("leasehold: key rejected; its budget admits nothing", "scope", b.scope, "key", r.key, "err", err)
			b.notifyLocked()
		}
		b.mu.slotErr = fmt.Errorf("leasehold: key %q: %w", r.key, err)
		b.mu.slotRetryAt = retryAt
		b.mu.Unlock()
		if retryAt != never {
			b.reaskAt.Store(retryAt) // as rejectLocked does for a token rule
		}
	}
}

// refusedRules returns the rules whose key the cluster refused, and
// whether every such refusal is one an operator can lift (retryable).
func (b *Budget) refusedRules() (rules []int, liftable bool) {
	liftable = true
	for i := range b.rules {
		var err error
		var retryAt int64
		if l := b.rules[i].lim; l != nil {
			l.mu.Lock()
			err, retryAt = l.mu.err, l.mu.retryAt
			l.mu.Unlock()
		} else {
			b.mu.Lock()
			err, retryAt = b.mu.slotErr, b.mu.slotRetryAt
			b.mu.Unlock()
		}
		if err != nil {
			rules = append(rules, i)
			liftable = liftable && retryAt != never
		}
	}
	return rules, liftable
}

// askRefused asks the cluster again, in the background, about the keys
// it refused, once the refusal backoff has passed (reaskAt): one Acquire
// of a token (or a slot) of each, given back at once (dropAnswer), whose
// answer lifts the refusals (accepted) or sets the next backoff. The
// reservation that finds the backoff passed claims the ask and gets the
// refusal, as do the others until the answer comes: the Budget admits
// nothing meanwhile, whatever the policies. The slot beside a key that
// grants no leases is asked apart from it, as acquireOwn does.
//
// reaskAt 0 says no refusal is recorded: every slow-path reservation calls
// this, and looking the rules up takes each rule's lock (~100 ns for three
// rules, a third of a reservation's fast path, measured by a review), so a
// Budget never refused, or whose refusals were lifted, returns at once.
func (b *Budget) askRefused(now int64) {
	at := b.reaskAt.Load()
	if at == 0 || now < at {
		return
	}
	rules, liftable := b.refusedRules()
	if len(rules) == 0 {
		// Lifted: until the next refusal stores its time. A refusal
		// stored since the load fails the swap, and is kept.
		b.reaskAt.CompareAndSwap(at, 0)
		return
	}
	if !liftable || !b.reaskAt.CompareAndSwap(at, now+int64(refusalBackoff())) {
		return
	}
	var ones [transport.MaxItems]int64
	for i := range ones {
		ones[i] = 1
	}
	asks := [][]int{rules}
	if k := slices.Index(rules, b.slot); k >= 0 && len(rules) > 1 {
		others := slices.Delete(slices.Clone(rules), k, k+1)
		if b.ownCentral(others) {
			asks = [][]int{{b.slot}, others}
		}
	}
	for _, rules := range asks {
		q := b.ownAcquire(rules, ones[:])
		b.c.spawn(func() { b.dropAnswer(q, b.sendOwn(q)) })
	}
}

// accepted records that the cluster answered an Acquire of rules: the
// refusals of their keys that an operator could lift are lifted.
func (b *Budget) accepted(rules []int) {
	for _, i := range rules {
		if l := b.rules[i].lim; l != nil {
			l.mu.Lock()
			l.acceptedLocked()
			l.mu.Unlock()
			continue
		}
		b.mu.Lock()
		if b.mu.slotErr != nil && b.mu.slotRetryAt != never {
			b.c.log.Info("leasehold: key accepted again", "scope", b.scope, "key", b.rules[i].key, "was", b.mu.slotErr)
			b.mu.slotErr, b.mu.slotRetryAt = nil, 0
		}
		b.mu.Unlock()
	}
}

// refused records the denial of a refresh: each item the key could not give
// its count refuses requests of that count until its retry-after (every
// item, if the answer names none).
func (b *Budget) refused(resp *pb.AcquireResponse, at sendTimes, recv int64, rules []int, counts []int64) {
	items := resp.GetItems()
	any := false
	for k := range rules {
		any = any || k < len(items) && items[k].GetRemaining() < counts[k]
	}
	for k, i := range rules {
		if any && (k >= len(items) || items[k].GetRemaining() >= counts[k]) {
			continue
		}
		l := b.rules[i].lim
		l.mu.Lock()
		l.answeredLocked(at.last, recv)
		if n := resp.GetLessees(); n > 0 {
			l.mu.lessees = n
		}
		l.deniedLocked(counts[k], at.first, recv, resp.GetRetryAfterNs())
		l.mu.Unlock()
	}
}

// install puts the items of a granted refresh into their rules' Limiters
// as one pool lease, and has the keeper watch it.
func (b *Budget) install(resp *pb.AcquireResponse, at sendTimes, recv int64, rules []int, items []*pb.AcquireItem, asked time.Duration) {
	sent := at.first
	id, ttl := resp.GetLeaseId(), time.Duration(resp.GetTtlNs())
	grants := resp.GetItems()
	if id == 0 || ttl <= 0 {
		// A central decision: the tokens are spent.
		b.grantNoLeases(rules)
		return
	}
	validUntil := sent + validity(ttl, b.c.cfg.drift)
	g := &leaseGroup{b: b, id: id, rules: rules, ttl: asked, lead: b.keepLead(rules, validUntil-sent)}
	g.mu.validUntil = validUntil
	deadline := validUntil - g.lead
	for k := range rules {
		p := newLease(id, grants[k].GetGranted(), sent, deadline, b.c.stripes)
		p.group = g
		g.pieces = append(g.pieces, p)
	}
	if deadline <= recv {
		// Dead on arrival (a slow reply, a pause): every token is unused.
		g.mu.ended = true
		g.giveBack(g.killPieces())
		return
	}
	g.keepUntil.Store(deadline + int64(b.c.cfg.reservationTTL))
	if !b.track(g, deadline) {
		g.mu.ended = true
		g.giveBack(g.killPieces())
		return
	}
	for k, i := range rules {
		l := b.rules[i].lim
		p := g.pieces[k]
		l.mu.Lock()
		if l.mu.closed {
			// Closed after track: Close's walk of the groups gives it back.
			l.mu.Unlock()
			continue
		}
		l.answeredLocked(at.last, recv)
		if n := resp.GetLessees(); n > 0 {
			l.mu.lessees = n
		}
		l.mu.stock = grants[k].GetRemaining()
		l.stock.Store(l.mu.stock)
		if pace := resp.GetRetryAfterNs(); pace > 0 && grants[k].GetGranted() < items[k].GetWant() {
			l.paceUntilLocked(max(sent+pace, recv))
		} else {
			l.setDeniedLocked(denial{})
		}
		l.mu.life = deadline - sent
		j, _ := slices.BinarySearchFunc(l.mu.leases, deadline, func(a *lease, d int64) int { return cmpInt(a.deadline, d) })
		l.mu.leases = slices.Insert(l.mu.leases, j, p)
		l.publishLocked(recv)
		l.mu.Unlock()
	}
}

// grantNoLeases records that one of rules' keys (token rules) grants no
// leases: the cluster answered a lease request of them with a central
// grant (the key's limit in the cluster differs from the rule's: first
// definition wins). They are decided per reservation from now on, with a
// central Acquire (Budget.ownCentral).
func (b *Budget) grantNoLeases(rules []int) {
	for _, i := range rules {
		l := b.rules[i].lim
		l.mu.Lock()
		l.mu.central, l.mu.noLease = true, true
		l.mu.Unlock()
	}
	b.c.log.Warn("leasehold: a budget rule's key grants no leases; deciding it per reservation", "scope", b.scope)
}

// shutdownGroups ends every lease of a closing Budget and returns the
// Releases to send: each lease the cluster still holds, with what its
// items hold.
func (b *Budget) shutdownGroups(groups []*leaseGroup, now int64) []groupRelease {
	var rels []groupRelease
	for _, g := range groups {
		if !g.end() {
			continue
		}
		g.gone.Store(true)
		unused := g.killPieces()
		g.mu.Lock()
		alive := now < g.mu.validUntil
		g.mu.Unlock()
		if alive {
			rels = append(rels, groupRelease{scope: b.scope, id: g.id, unused: unused})
		}
	}
	return rels
}

// groupRelease is a Budget lease to give back.
type groupRelease struct {
	scope  string
	id     uint64
	unused []int64
}
