package client

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

// settleJob is what an ended reservation still has to tell the cluster: a
// Release of its own lease (refunds and its InFlight slot) and a Charge of
// what it used beyond its reservation. The requests are built once, with
// their seqs, so that a retry is the same request and the cluster applies
// it once.
type settleJob struct {
	gen     uint64
	done    chan struct{} // closed when err is set
	err     error
	release *pb.ReleaseRequest
	charge  *pb.ChargeRequest
	slot    bool // release gives back an InFlight slot
}

// settle ends rec at generation gen, its local part done by the caller of
// begin: Settle with actual, or Cancel (cancel: nothing is charged). Each
// rule's excess over its reservation is taken from a lease this process
// holds if it can and charged for the rest; what a rule did not use goes
// back where it came from. It returns the job that tells the cluster, now
// running, or nil if nothing needed telling (rec is then reused); and, if
// a lease rec took from had ended, an error matching ErrExpired that says
// what stayed charged.
func (b *Budget) settle(rec *reservation, gen uint64, actual Cost, cancel bool) (*settleJob, error) {
	now := int64(-1) // read when needed
	var amounts [len(rec.takes)]int64
	if !cancel {
		amounts = b.amounts(actual)
	}
	// The reservation's own lease is ended here, before the refunds into
	// it, so that the keeper's abandon or the Budget's Close cannot take
	// it meanwhile; if one of them (or a failed renewal) ended it first,
	// what would be refunded into it stays charged.
	own := rec.group
	ownEnded := own != nil && own.end()
	ownGone := own != nil && (!ownEnded || own.gone.Load())
	var lost [len(rec.takes)]int64 // unused tokens not given back, by rule
	var charge []*pb.ChargeItem
	var charged int64 // for Stats
	for i := range b.rules {
		if i == b.slot {
			continue
		}
		r := &b.rules[i]
		t := &rec.takes[i]
		a, n := amounts[i], t.total()
		// A refund goes into the lease it came from: spent again before
		// the lease's deadline, given back with its Release after it.
		if ownGone && t.np > 0 && t.parts[0].ls != nil && t.parts[0].ls.group == own {
			lost[i] = max(0, n-a)
		} else {
			lost[i] = t.refund(n - a)
		}
		t.end()
		if extra := a - n; extra > 0 && !t.policy {
			if now < 0 {
				now = b.c.now()
			}
			extra -= takeExtra(r.lim, extra, now)
			if extra > 0 {
				charge = append(charge, &pb.ChargeItem{Key: r.key, Tokens: extra, Limit: r.item})
				charged += extra
			}
		}
	}
	if charged > 0 {
		b.c.stats.add(statCharged, uint64(charged))
	}
	if rec.fallbackSlot {
		b.mu.Lock()
		b.mu.fallbackSlots--
		b.mu.Unlock()
	}
	var release *pb.ReleaseRequest
	slot := false
	if ownEnded && !ownGone {
		unused := own.killPieces()
		for k, i := range own.rules {
			slot = slot || i == b.slot
			if cancel && i != b.slot {
				unused[k] = own.pieces[k].granted // everything back, refunds or not
			}
		}
		release = &pb.ReleaseRequest{ClientId: b.c.id, LeaseId: own.id, Unused: unused}
	}
	var expired error
	if ownGone || rec.leaseGone() || slices.ContainsFunc(lost[:len(b.rules)], func(n int64) bool { return n > 0 }) {
		b.c.stats.add(statExpired, 1)
		expired = b.expiredError(lost[:], own != nil && slices.Contains(own.rules, b.slot), charged > 0)
	}
	if release == nil && len(charge) == 0 {
		rec.recycle(gen)
		return nil, expired
	}
	job := &settleJob{gen: gen, done: make(chan struct{}), release: release, slot: slot}
	if len(charge) > 0 {
		job.charge = &pb.ChargeRequest{ClientId: b.c.id, Items: charge}
	}
	rec.job.Store(job)
	rec.state.Store(gen<<phaseBits | phasePending)
	if job.release != nil {
		job.release.Seq = b.c.seqs.begin()
	}
	if job.charge != nil {
		job.charge.Seq = b.c.seqs.begin()
	}
	if !b.c.spawn(func() { b.runJob(rec, job) }) {
		b.finishJob(rec, job, ErrClosed)
	}
	return job, expired
}

// expiredError is what ending a reservation whose lease had ended
// returns: lost is each rule's unused tokens that stayed charged, slot
// whether it had held an InFlight slot (which came back when the lease
// ended), charged whether an excess is being charged.
func (b *Budget) expiredError(lost []int64, slot, charged bool) error {
	why := "its lease ended before the reservation did (no KeepAlive within the reservation TTL, or the cluster lost the lease)"
	b.mu.Lock()
	if b.mu.closed {
		why = "its Budget was closed before the reservation ended"
	}
	b.mu.Unlock()
	var kept []string
	for i, n := range lost[:len(b.rules)] {
		if n > 0 {
			kept = append(kept, fmt.Sprintf("%d of rule %v (%q)", n, b.rules[i].Counts, b.rules[i].key))
		}
	}
	what := "no unused tokens to give back"
	if len(kept) > 0 {
		what = "unused and not given back, so still charged: " + strings.Join(kept, ", ")
	}
	if charged {
		what += "; the excess over the reservation is charged as usual"
	}
	if slot {
		what += "; its in-flight slot had come back when the lease ended"
	}
	return fmt.Errorf("%w (budget %q): %s; %s", ErrExpired, b.scope, why, what)
}

// takeExtra takes up to n tokens from the lease l spends from first, with
// no lock, and returns how many it took: excess usage paid by a lease this
// process holds is not debt.
func takeExtra(l *Limiter, n, now int64) int64 {
	ls := l.head.Load()
	if ls == nil || now >= ls.deadline {
		return 0
	}
	got := int64(0)
	for j := range ls.stripes {
		if got += ls.stripes[j].takeUpTo(n - got); got == n {
			break
		}
	}
	return got
}

// runJob sends a job's requests, each retried with its seq until answered
// or settleRetryFor has passed, and records the outcome.
func (b *Budget) runJob(rec *reservation, job *settleJob) {
	ctx, cancel := context.WithTimeout(b.c.base, settleRetryFor)
	defer cancel()
	var errs []error
	if job.release != nil {
		if _, err := b.c.sendRelease(ctx, job.release); err != nil {
			errs = append(errs, fmt.Errorf("release: %w", err))
		}
		if job.slot {
			b.slotFreed()
		}
	}
	if job.charge != nil {
		resp, err := b.c.sendCharge(ctx, job.charge)
		if err != nil {
			errs = append(errs, fmt.Errorf("charge: %w", err))
		} else {
			for k, it := range resp.GetItems() {
				if f := it.GetForgiven(); f > 0 {
					b.c.stats.add(statForgiven, uint64(f))
					b.c.log.Info("leasehold: a settle above its reservation reached the rule's debt cap; the rest is forgiven",
						"key", job.charge.Items[k].GetKey(), "charged", it.GetCharged(), "forgiven", f)
				}
			}
		}
	}
	var err error
	if len(errs) > 0 {
		err = fmt.Errorf("leasehold: settle of a %q reservation: %w", b.scope, errors.Join(errs...))
		b.c.log.Warn("leasehold: a reservation's settle did not reach the cluster", "scope", b.scope, "err", err)
	}
	b.finishJob(rec, job, err)
}

// finishJob records a job's outcome: its seqs are done with, and rec is
// reused if it succeeded (a failed one stays, so that a retried Settle
// finds the error).
func (b *Budget) finishJob(rec *reservation, job *settleJob, err error) {
	if job.release != nil {
		b.c.seqs.end(job.release.Seq)
	}
	if job.charge != nil {
		b.c.seqs.end(job.charge.Seq)
	}
	job.err = err
	close(job.done)
	if err == nil {
		rec.recycle(job.gen)
	}
}
