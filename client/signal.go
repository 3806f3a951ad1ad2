package client

import (
	"context"
	"fmt"
	"math"
	"time"

	"github.com/leasehold/leasehold/transport"
	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

// signalInterval is the least time between two Restricts of one rule's
// key: a guard reports the provider's remaining headers on every response,
// and all of them between two Restricts become the next one.
const signalInterval = time.Second

// signals are the provider's word (Block, Lower) on its way to the
// cluster, coalesced per rule. Guarded by Budget.mu.
type signals struct {
	sending  bool                              // a sender goroutine is running
	pending  [transport.MaxItems]pendingSignal // per rule index
	lastSent [transport.MaxItems]int64         // when a Restrict of the rule last went (Client clock); 0: never
	sentTill [transport.MaxItems]int64         // the latest block end sent for the rule
}

// pendingSignal is what the next Restrict of a rule says.
type pendingSignal struct {
	block     int64 // block until then (Client clock); 0: no block
	lower     bool  // lower to remaining as of at
	remaining int64
	at        int64 // when Lower said remaining (Client clock)
}

// Block tells the Budget the provider refused a call and said to wait: no
// reservation is admitted for wait from now, in this process at once (held
// leases included), and in every process sharing the Budget's keys within
// Λ (their leases run out; the cluster grants nothing on the keys until the
// block ends, and then refills them from empty). A later Block may lengthen
// the block, never shorten it; wait is at most 24h (transport.MaxBlock).
//
// Block returns at once: the Restrict of the Budget's token rules goes to
// the cluster in the background, at most one per rule per second
// (signalInterval), the latest block winning.
func (b *Budget) Block(ctx context.Context, wait time.Duration) error {
	if err := b.usable(); err != nil {
		return err
	}
	if wait <= 0 {
		return ctx.Err()
	}
	wait = min(wait, transport.MaxBlock)
	now := b.c.now()
	until := now + int64(wait)
	maxInt64(&b.blocked, until)
	b.signal(func(i int, p *pendingSignal) {
		if until > b.mu.sig.sentTill[i] {
			p.block = max(p.block, until)
		}
	}, func(r *budgetRule) bool { return r.lim != nil })
	b.notify()
	return ctx.Err()
}

// Lower tells the Budget the provider says at most remaining of dim are
// left: the rules counting dim (and, for Tokens, those counting input or
// output tokens, each of which is at most the total) are lowered to hold at
// most remaining now, in the cluster; it never raises what a rule holds.
// With remaining 0 and a reset, it is a Block for the reset.
//
// Lower is cheap enough for every response: it records the value and
// returns; a Restrict goes to the cluster at most once per rule per second
// (signalInterval), with the latest value. A remaining at or above a rule's
// burst lowers nothing and is dropped.
func (b *Budget) Lower(ctx context.Context, dim Dimension, remaining int64, reset time.Duration) error {
	if err := b.usable(); err != nil {
		return err
	}
	if remaining < 0 {
		return fmt.Errorf("leasehold: Lower(%v, %d): remaining must not be negative", dim, remaining)
	}
	if remaining == 0 && reset > 0 {
		return b.Block(ctx, reset)
	}
	now := b.c.now()
	b.signal(func(_ int, p *pendingSignal) {
		p.lower, p.remaining, p.at = true, remaining, now
	}, func(r *budgetRule) bool {
		counts := r.Counts == dim || dim == Tokens && (r.Counts == InputTokens || r.Counts == OutputTokens)
		return counts && r.lim != nil && remaining < r.lim.capacity
	})
	return ctx.Err()
}

// signal records set on the pending signal of every rule that match
// selects, and starts the sender if it is not running.
func (b *Budget) signal(set func(int, *pendingSignal), match func(*budgetRule) bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.mu.closed {
		return
	}
	any := false
	for i := range b.rules {
		if match(&b.rules[i]) {
			set(i, &b.mu.sig.pending[i])
			any = any || b.mu.sig.pending[i] != pendingSignal{}
		}
	}
	if any && !b.mu.sig.sending {
		b.mu.sig.sending = true
		if !b.c.spawn(b.sendSignals) {
			b.mu.sig.sending = false
		}
	}
}

// sendSignals sends the pending signals, one Restrict for every rule that
// is due, until none is pending. It runs on a goroutine the Client owns.
func (b *Budget) sendSignals() {
	for {
		b.mu.Lock()
		if b.mu.closed {
			b.mu.sig.sending = false
			b.mu.Unlock()
			return
		}
		now := b.c.now()
		var items []*pb.RestrictItem
		next := int64(never)
		for i := range b.rules {
			p := &b.mu.sig.pending[i]
			if *p == (pendingSignal{}) {
				continue
			}
			if last := b.mu.sig.lastSent[i]; now < last+int64(signalInterval) {
				next = min(next, last+int64(signalInterval))
				continue
			}
			it := &pb.RestrictItem{Key: b.rules[i].key, Limit: b.rules[i].item}
			if p.block > now {
				it.BlockedForNs = min(p.block-now, int64(transport.MaxBlock))
				b.mu.sig.sentTill[i] = max(b.mu.sig.sentTill[i], p.block)
			}
			if p.lower {
				if rem, ok := b.rules[i].since(p.remaining, now-p.at); ok {
					it.Remaining = &rem
				}
			}
			*p = pendingSignal{}
			if it.Remaining == nil && it.BlockedForNs == 0 {
				continue // a block that ended while it waited
			}
			items = append(items, it)
			b.mu.sig.lastSent[i] = now
		}
		if len(items) == 0 && next == never {
			b.mu.sig.sending = false
			b.mu.Unlock()
			return
		}
		b.mu.Unlock()
		if len(items) == 0 {
			if err := b.c.eps.sleep(b.c.base, time.Duration(next-now)); err != nil {
				b.mu.Lock()
				b.mu.sig.sending = false
				b.mu.Unlock()
				return
			}
			continue
		}
		ctx, cancel := context.WithTimeout(b.c.base, b.c.cfg.requestTimeout)
		_, err := b.c.restrict(ctx, items)
		cancel()
		if err != nil {
			b.c.log.Warn("leasehold: could not tell the cluster a provider's limit; other processes learn it from the provider",
				"scope", b.scope, "err", err)
		}
	}
}

// since returns what a rule lowered to remaining dt ago (ns) holds now: the
// remaining plus the rule's refill since, and false if that is its whole
// capacity (nothing to lower).
//
// A Restrict lowers the key as of when the cluster applies it, and the
// remaining it carries may be up to signalInterval old: the last of the
// responses coalesced since the previous Restrict, which may have been the
// last before the process stopped calling for a while. Sent as it was, a
// remaining observed before a pause took away every token the key refilled
// in the pause (measured in ai-demo, 2026-12-06: 13,252 of the row's
// 400,000 tokens, 3.3% of the provider's limit, in Restricts taking up to
// 8,150 tokens each, with the Budget the provider's only caller). The rule's
// own refill since the observation is what its key would hold had the
// Restrict applied at once, so crediting it never raises the key above
// what Lower said.
func (r *budgetRule) since(remaining, dt int64) (int64, bool) {
	if r.lim == nil {
		return remaining, true
	}
	credit := math.Floor(r.lim.keyRate * float64(max(dt, 0)))
	if float64(remaining)+credit >= float64(r.lim.capacity) {
		return 0, false
	}
	return remaining + int64(credit), true
}
