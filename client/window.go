package client

import (
	"math"
	"slices"
	"time"

	"github.com/leasehold/leasehold/limiter"
	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

// A sliding window's leases come in pieces (fsm/DESIGN.md, "Sliding
// windows"): the cluster counts a lease against every window its life
// overlaps, so a lease spendable at any instant of its life costs the window
// its tokens twice over, and a window leased that way admitted about half
// its limit. A Limiter of a sliding window asks for its leases paced: the
// cluster grants them as pieces, one per bucket of the window (log time
// [k·piece, (k+1)·piece)), and the Limiter spends each only within its
// bucket, as its own clock bounds it. Each piece is installed as a lease of
// its own, with the lease id of the whole, and begins at its start.

// pacing is what an Acquire asks of a sliding window's lease (transport's
// AcquireRequest.paced and paced_after_ns).
type pacing struct {
	paced bool
	after int64 // log time, ns: no piece before it
	// live: the Limiter holds a piece not over on its own clock (not
	// sent; planPacedLocked's answer to refresh).
	live bool
	// span, for a central decision (ttl 0) on a sliding window: the span
	// the window is to count it over (AcquireRequest.span_ns;
	// centralSpanLocked).
	span time.Duration
	// spanBuckets, with span: a token bucket's central decision, which
	// asks the cluster to answer the span cut to the key's MaxLease
	// (AcquireRequest.span_buckets).
	spanBuckets bool
}

// piecesLocked installs a pieced lease answered at recv to a request sent
// at sent. Piece i covers log time [b_i, e_i) of its bucket, from the
// answer's log time T at the earliest; the Limiter spends it from
//
//	hi + (b_i − T)·(1+ρ)/(1−ρ)   (rounded up)
//
// to lo + validity(e_i − T), on its own clock, where [lo, hi] is when, on
// our clock, the leader stamped T (stampedWithin: within the round trip,
// narrowed by the times the leader reports it held the request before and
// after the stamp), and never after the lease's own deadline, sent +
// validity(TTL): a lease's life counts from when it was asked for, and the
// last piece would otherwise outlive it by what the leader queued it (the
// chaos checker's lease-expiry check caught that). By the start the leader's clock has run b_i − T since
// the stamp even if it is slow by ρ and ours fast by ρ, and by the end it
// has run no more than e_i − T even if it is fast and ours slow, as
// validity says for every lease. So every token is spent within its bucket
// as the window counted it (a stalled log clock, as in an election, only
// makes a piece begin later than its bucket in log time; DESIGN.md). A
// piece whose span is empty on our clock (a stamp more uncertain than its
// bucket is long) is never spent.
// The bracket begins at since, not sent, when the cluster says the attempt
// sent at since was decided by the entry it reports on (a retry after a
// leader change): that entry was stamped after the attempt arrived. An
// answer remembered from an earlier entry is bracketed from sent, the first
// send, as that entry may have been stamped before any retry was sent; the
// lease's own deadline counts from sent in either case.
// It returns the lease if no piece has an instant on our clock (it was over
// when the answer came, or the round trip outlasted every bucket), for the
// caller to release whole.
func (l *Limiter) piecesLocked(resp *pb.AcquireResponse, sent, since, recv int64) (dead *lease) {
	granted := resp.GetItems()[0].GetGranted()
	t, ttl, g := resp.GetLogTimeNs(), resp.GetTtlNs(), resp.GetPieceNs()
	m := int64(resp.GetPieces())
	end := t + ttl
	last := (end - 1) / g
	first := last - m + 1
	rho := l.c.cfg.drift
	lo, hi := stampedWithin(resp, since, recv, rho)
	// The lease's own deadline: its life counts from sent (AcquireResponse.
	// ttl_ns), and no token of it is spent after, whatever its buckets.
	whole := sent + validity(time.Duration(ttl), rho)
	var pieces []*lease
	for i := range m {
		b := max((first+i)*g, t) - t
		e := min((first+i+1)*g, end) - t
		start := hi
		if b > 0 {
			start += int64(math.Ceil(float64(b) * (1 + rho) / (1 - rho)))
		}
		p := newLease(resp.GetLeaseId(), limiter.Piece(granted, m, i), sent, min(lo+validity(time.Duration(e), rho), whole), l.c.stripes)
		p.start = start
		pieces = append(pieces, p)
	}
	lastDeadline := pieces[len(pieces)-1].deadline
	l.mu.pieceNs = g
	usable := false
	for _, p := range pieces {
		usable = usable || p.deadline > max(p.start, recv)
	}
	if !usable {
		// Over before the answer came, or a round trip longer than a
		// bucket (the first answer after an election can take a second
		// or more) left no piece an instant on our clock: one lease to
		// give back whole, and the next asked for from now (pacedEnd is
		// left alone), not after this one's pieces.
		return newLease(resp.GetLeaseId(), granted, sent, lastDeadline, 1)
	}
	if pace := resp.GetRetryAfterNs(); pace > 0 {
		// Short of its want: no Acquire before the last piece begins,
		// when the next lease would continue this one. What the pieces
		// do not cover is not refused for it: the pieces are the pace.
		l.notBefore.Store(max(sent+pace, recv))
	}
	l.setDeniedLocked(denial{})
	l.mu.lastPieced = piecedLease{id: resp.GetLeaseId(), pieces: pieces, deadline: lastDeadline, life: lastDeadline - sent}
	l.mu.pacedEnd = max(l.mu.pacedEnd, end)
	l.mu.life = lastDeadline - sent
	for _, p := range pieces {
		if p.deadline <= max(p.start, recv) {
			continue // no instant of it on our clock
		}
		i, _ := slices.BinarySearchFunc(l.mu.leases, p.deadline, func(a *lease, d int64) int {
			return cmpInt(a.deadline, d)
		})
		l.mu.leases = slices.Insert(l.mu.leases, i, p)
	}
	l.publishLocked(recv)
	return nil
}

// stampedWithin returns when, on our clock, the cluster stamped the log
// time of resp, an answer read at recv to an Acquire whose stamp came after
// since (the first send, or the send of the attempt the cluster says it
// decided: Client.acquire): within [lo, hi], since <= lo <= hi <= recv. The
// leader reports how long it held the request before the stamp (queued_ns,
// 0 for a retry's remembered answer: the Client clears it) and after it
// (answered_ns), on its own clock; each is at least that times (1−ρ)/(1+ρ)
// on ours, whichever of the two clocks runs fast. Without them, or if they
// do not fit the round trip (a clock out of its spec), the bracket is
// [since, recv].
//
// Under load most of a round trip is the leader's: its batch waiting for
// the disk, the Raft commit, the apply (issue 14: pieces of 62.5 ms lost
// what round trips of 50–130 ms ate of them).
func stampedWithin(resp *pb.AcquireResponse, since, recv int64, rho float64) (lo, hi int64) {
	q, a := resp.GetQueuedNs(), resp.GetAnsweredNs()
	if q < 0 || a < 0 {
		return since, recv
	}
	lo = since + validity(time.Duration(q), rho)
	hi = recv - validity(time.Duration(a), rho)
	if lo > hi {
		return since, recv
	}
	return lo, hi
}

// awaitPieceLocked refuses requests until the head begins, if it is a piece
// still to come: every piece before it is spent or over, and the next
// tokens are the head's. It never shortens a longer refusal.
func (l *Limiter) awaitPieceLocked(now int64) {
	head := l.mu.leases[0]
	if head.start <= now || l.mu.denied.until >= head.start {
		return
	}
	l.setDeniedLocked(denial{count: 1, until: head.start})
}

// armPacedLocked sets a paced Limiter's refresh trigger: the time its last
// piece begins, less two round trips, so that the next lease, which begins
// after the last piece, is answered before it ends. Pieces have no low-water
// trigger: a piece runs out by design, and the next begins with its bucket.
func (l *Limiter) armPacedLocked() {
	head := l.mu.leases[0]
	var lastStart int64
	for _, ls := range l.mu.leases {
		lastStart = max(lastStart, ls.start)
	}
	head.refreshAt.Store(lastStart - int64(2*l.mu.rtt))
	for i := range head.stripes {
		head.stripes[i].low.Store(0)
	}
}

// planPacedLocked is planLocked for a paced Limiter: a refresh is due when
// it holds no piece still to spend, or its last piece is about to begin.
// Want is its demand over the lease's life (the cluster spreads it over the
// life's buckets), plus what blocked callers need; the lease is asked to
// begin where the pieces held end.
func (l *Limiter) planPacedLocked(now int64) (count, want int64, p pacing, due bool) {
	l.sampleLocked(now)
	rate := l.rateLocked()
	var held, lastStart, minNeed, sumNeed int64
	live := false
	for _, ls := range l.mu.leases {
		if now < ls.deadline {
			held += ls.left()
			lastStart = max(lastStart, ls.start)
			live = true
		}
	}
	for _, n := range l.mu.needs {
		if minNeed == 0 || n < minNeed {
			minNeed = n
		}
		sumNeed += n
	}
	due = held == 0 || now >= lastStart-int64(2*l.mu.rtt)
	if !due {
		return 0, 0, pacing{}, false
	}
	count = max(1, minNeed)
	want = max(count, int64(math.Ceil(rate*float64(l.expect)))+sumNeed)
	want = min(want, max(count, l.maxGrant))
	// Continue the pieces held, or, with none left on our clock, begin
	// now: after an election or an outage the log's time lags ours (time
	// lost is never credited), and the end of the last pieces in log time
	// lies that far in the future; asking to begin there would leave the
	// Limiter without tokens for as long again (issue 14's chaos run lost
	// seconds of every window after a full outage). Pieces in the buckets
	// of pieces already over cost the bound nothing: each bucket's cap
	// counts them all.
	after := l.mu.pacedEnd
	if !live {
		after = 0
	}
	return count, want, pacing{paced: true, after: after, live: live}, true
}

// piecedLease is a pieced lease as installed: every piece, in order (those
// never usable on our clock too), and when the last one ends on our clock.
type piecedLease struct {
	id       uint64
	pieces   []*lease
	deadline int64 // Client clock, ns
	life     int64 // deadline − sent, ns
}

// strandedLocked returns the last pieced lease's stranded tokens, for a
// Release, once all its pieces are over on our clock: the tokens of the
// pieces never touched from its end back, and what is left of the last one
// touched. Each is marked dead first. It returns 0 while a piece may still
// be spent, and for a lease over for longer than its life.
//
// Stranded pieces are those the Limiter could not spend while the cluster
// was away: an election or outage stalls log time, so when the cluster
// answers again, the buckets of those pieces still lie ahead in log time,
// booked to the cap, and every Limiter's next lease is refused until log
// time has passed them. Giving them back frees those buckets at once
// (issue 14: after each leader fault the chaos run's window admitted a
// fifth of its limit for up to a lease's life more than the fault lasted).
// The cluster returns a pieced lease's last pieces first, so a Release of
// exactly this suffix takes back only tokens never spent, in the buckets
// they were counted in: the bound is untouched. Over for longer than its
// life, the lease is taken as over in log time too (a Release would find
// it gone and cost a Raft write for nothing).
func (l *Limiter) strandedLocked(now int64) (id uint64, unused int64) {
	p := l.mu.lastPieced
	if p.id == 0 || now < p.deadline {
		return 0, 0
	}
	l.mu.lastPieced = piecedLease{}
	if now-p.deadline > p.life {
		return 0, 0
	}
	// Drop them from the held leases first, so that the demand estimate
	// counts what they had spent, not what is killed here.
	l.publishLocked(now)
	for i := len(p.pieces) - 1; i >= 0; i-- {
		pc := p.pieces[i]
		left := pc.kill()
		unused += left
		if left != pc.granted {
			break // touched: the pieces before it were spent from
		}
	}
	return p.id, unused
}

// pacedLocked reports whether the Limiter asks for its next lease in pieces:
// a sliding window's does, unless its round trips are longer than 3/4 of a
// bucket. A piece is spendable for a bucket less a round trip on our clock
// (piecesLocked). A saturated key's client, asking several times its share,
// spends its piece in a fraction of the bucket (a quarter at 4×), so a
// piece a quarter of a bucket long still serves it; shorter, it loses
// tokens, and past a bucket it loses them all. The Limiter then asks for a
// lease counted over its whole life, as windows leased before pieces: it
// costs the window twice its tokens, but it can be spent. Each answer
// updates the round trip, so it goes back to pieces once they are quick
// again; each sample counts as at most two buckets, so that one answer
// that took seconds (across an election) keeps it off pieces for a few
// answers, not a dozen leases (a chaos run's window spent 30 s mostly on
// whole leases after a full outage).
func (l *Limiter) pacedLocked() bool {
	return l.paced && (l.mu.pieceNs == 0 || l.mu.pieceBlur <= float64(l.mu.pieceNs)*3/4)
}
