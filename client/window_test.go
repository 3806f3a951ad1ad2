package client_test

import (
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/leasehold/leasehold/client"
	"github.com/leasehold/leasehold/limiter"
)

// pieceLog records, through a Trace, the pieced leases a Client was granted
// and the time of each admission from a lease.
type pieceLog struct {
	mu     sync.Mutex
	grants map[uint64]client.AcquireDoneInfo
	sent   map[uint64]time.Time // by seq, then by lease id once granted
	admits []pieceAdmit
}

type pieceAdmit struct {
	at    time.Time
	lease uint64
	n     int64
}

func (p *pieceLog) trace() *client.Trace {
	p.grants = map[uint64]client.AcquireDoneInfo{}
	p.sent = map[uint64]time.Time{}
	seqs := map[uint64]time.Time{}
	return &client.Trace{
		AcquireStart: func(i client.AcquireStartInfo) {
			p.mu.Lock()
			seqs[i.Seq] = i.Sent
			p.mu.Unlock()
		},
		AcquireDone: func(i client.AcquireDoneInfo) {
			if i.Err == nil && i.Allowed && i.LeaseID != 0 {
				p.mu.Lock()
				p.grants[i.LeaseID] = i
				p.sent[i.LeaseID] = seqs[i.Seq]
				p.mu.Unlock()
			}
		},
		Admit: func(i client.AdmitInfo) {
			if i.LeaseID != 0 {
				p.mu.Lock()
				p.admits = append(p.admits, pieceAdmit{at: time.Now(), lease: i.LeaseID, n: i.N})
				p.mu.Unlock()
			}
		},
	}
}

// check fails t unless every admission from a pieced lease lies in the
// bucket of one of its pieces (log time of the fake, from start), within
// the lease's life from when it was asked for (Sent + TTL), and no piece
// gave more than it holds.
func (p *pieceLog) check(t *testing.T, start time.Time) (pieced, admitted int) {
	t.Helper()
	return p.checkLagged(t, start, func(uint64) time.Duration { return 0 })
}

// checkLagged is check for a log that stalled: lag(lease) is how far the
// fake's log time lagged its start's clock when it stamped the lease, so
// that the lease's buckets lie that much later on the real clock (its
// leader's image of them).
func (p *pieceLog) checkLagged(t *testing.T, start time.Time, lag func(lease uint64) time.Duration) (pieced, admitted int) {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	spent := map[[2]int64]int64{} // (lease, bucket) -> tokens
	for _, a := range p.admits {
		g, ok := p.grants[a.lease]
		if !ok || g.Pieces == 0 {
			continue
		}
		admitted++
		width := int64(g.Piece)
		end := int64(g.LogTime + g.TTL)
		last := (end - 1) / width
		first := last - int64(g.Pieces) + 1
		at := int64(a.at.Sub(start) - lag(a.lease))
		b := at / width
		if b < first || b > last || at < int64(g.LogTime) {
			t.Errorf("lease %d (buckets %d..%d of %v) spent at %v, in bucket %d", a.lease, first, last, g.Piece, time.Duration(at), b)
			continue
		}
		if expired := p.sent[a.lease].Add(g.TTL); a.at.After(expired) {
			t.Errorf("lease %d spent at %v, %v after its life (sent + TTL)", a.lease, time.Duration(at), a.at.Sub(expired))
		}
		spent[[2]int64{int64(a.lease), b}] += a.n
		if got, most := spent[[2]int64{int64(a.lease), b}], limiter.Piece(g.Granted, int64(g.Pieces), b-first); got > most {
			t.Errorf("lease %d spent %d in bucket %d, its piece holds %d", a.lease, got, b, most)
		}
	}
	for _, g := range p.grants {
		if g.Pieces > 0 {
			pieced++
		}
	}
	return pieced, admitted
}

// A sliding window's Limiter asks for its leases paced, spends each piece
// only within its bucket (and no more than it holds), refuses between
// pieces without asking the cluster, and asks for the next lease as its last
// piece begins, continuing where the last one ends.
func TestWindowSpendsPiecesInTheirBuckets(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 1)
		f.set(func(f *fakeCluster) { f.mu.piece = 100 * time.Millisecond })
		var log pieceLog
		c := f.dial(t, client.WithTrace(log.trace()))
		l := client.LeasingForTest(c.Limiter("w", client.Limit{Algorithm: client.SlidingWindow, Rate: 200, Per: time.Second}))
		// Demand of 1000/s, five times the window's limit.
		var allowed, refused int
		for range 3000 {
			if l.Allow() {
				allowed++
			} else {
				refused++
			}
			time.Sleep(time.Millisecond)
		}
		pieced, admitted := log.check(t, f.start)
		t.Logf("%d allowed, %d refused; %d pieced leases, %d admissions from them; %d acquires", allowed, refused, pieced, admitted, len(f.acquires()))
		if pieced < 2 || admitted < allowed/2 {
			t.Fatalf("%d pieced leases, %d of %d admissions from them: the limiter should lease in pieces", pieced, admitted, allowed)
		}
		var after int64
		for i, a := range f.acquires() {
			req := a.req
			if req.GetTtlNs() == 0 {
				continue // a central decision of the start
			}
			if !req.GetPaced() {
				t.Errorf("acquire %d of a sliding window is not paced", i)
			}
			if got := req.GetPacedAfterNs(); got < after {
				t.Errorf("acquire %d asks for pieces after %v, before the end of the last lease, %v", i, time.Duration(got), time.Duration(after))
			}
			after = max(after, req.GetPacedAfterNs())
		}
		// Each lease is 2s (the fake's cap) of 100ms buckets: about two
		// leases in 3s, each asked for as its last piece begins. The
		// pieces cover their buckets; between them the Limiter refuses on
		// its own.
		if n := len(f.acquires()); n > 6 {
			t.Errorf("%d acquires in 3s: a paced limiter should ask about once a lease", n)
		}
	})
}

// Close gives back, in one Release per lease, what the piece in use has left
// and every piece to come: the cluster refunds a pieced lease from its last
// piece back.
func TestWindowReleasesTheRestOfItsPieces(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 1)
		f.set(func(f *fakeCluster) { f.mu.piece = 100 * time.Millisecond })
		var log pieceLog
		c := f.dial(t, client.WithTrace(log.trace()))
		l := client.LeasingForTest(c.Limiter("w", client.Limit{Algorithm: client.SlidingWindow, Rate: 200, Per: time.Second}))
		if !l.Allow() {
			t.Fatal("first Allow = false")
		}
		time.Sleep(250 * time.Millisecond) // into the lease's third bucket
		if !l.Allow() {
			t.Fatal("Allow in the third piece = false")
		}
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
		rels := f.releases()
		if len(rels) != 1 {
			t.Fatalf("%d releases, want 1 for the one lease", len(rels))
		}
		g := log.grants[rels[0].GetLeaseId()]
		m := int64(g.Pieces)
		// Spent: 1 in the first piece, 1 in the third. Given back: the
		// third's rest and every later piece's.
		var want int64
		for i := int64(2); i < m; i++ {
			want += limiter.Piece(g.Granted, m, i)
		}
		want--
		if got := rels[0].GetUnused()[0]; got != want {
			t.Errorf("released %d unused of a lease of %d in %d pieces, want %d", got, g.Granted, m, want)
		}
	})
}

// TestWindowBeginsNowAfterTheLogStalled: once every piece a Limiter held is
// over on its own clock, its next lease begins now, not where its last
// pieces end in log time. After an election or a full outage the log's time
// lags real time (time lost is never credited); a Limiter that asked to
// continue its old pieces waited for the log to catch up with them, and the
// chaos run's window admitted a tenth of its limit for seconds after every
// full outage.
func TestWindowBeginsNowAfterTheLogStalled(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 1)
		f.set(func(f *fakeCluster) { f.mu.piece = 100 * time.Millisecond })
		c := f.dial(t)
		l := client.LeasingForTest(c.Limiter("w", client.Limit{Algorithm: client.SlidingWindow, Rate: 200, Per: time.Second}))
		allow := func(n int) (admitted int) {
			for range n {
				if l.Allow() {
					admitted++
				}
				time.Sleep(time.Millisecond)
			}
			return admitted
		}
		allow(300)
		// The log stalls for 3s, longer than a lease, and the cluster
		// refuses until it moves again: the Limiter's pieces run out.
		f.set(func(f *fakeCluster) {
			f.mu.lag = 3 * time.Second
			f.mu.denyUntil = f.start.Add(time.Duration(f.now()) + time.Millisecond)
		})
		allow(3000)
		before := len(f.acquires())
		admitted := allow(300)
		var logNow int64
		f.set(func(f *fakeCluster) { logNow = f.now() })
		for _, a := range f.acquires()[before:] {
			if a.req.GetTtlNs() > 0 && a.req.GetPacedAfterNs() > logNow {
				t.Errorf("an acquire after the stall asks for pieces after %v, past the log's time %v",
					time.Duration(a.req.GetPacedAfterNs()), time.Duration(logNow))
			}
		}
		// 300ms at 1000/s of a window of 200/s: the fake grants 24 of
		// them; a Limiter continuing its old pieces got none.
		t.Logf("%d admitted in the 300ms after a 3s stall of the log", admitted)
		if admitted < 15 {
			t.Errorf("%d admitted in the 300ms after the stall; the Limiter should lease again at once", admitted)
		}
	})
}

// TestWindowGivesBackALeaseASlowAnswerLeftNoPieceOf: an answer that comes
// later than a bucket after its request (the first after an election) leaves
// no piece an instant on the Limiter's clock. The Limiter gives the lease
// back whole and asks again from now; it kept it, and its next lease began
// where the useless one ended, a lease's life later.
func TestWindowGivesBackALeaseASlowAnswerLeftNoPieceOf(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 1)
		f.set(func(f *fakeCluster) {
			f.mu.piece = 100 * time.Millisecond
			f.mu.delay = 300 * time.Millisecond
		})
		var log pieceLog
		c := f.dial(t, client.WithTrace(log.trace()))
		l := client.LeasingForTest(c.Limiter("w", client.Limit{Algorithm: client.SlidingWindow, Rate: 200, Per: time.Second}))
		allow := func(n int) (admitted int) {
			for range n {
				if l.Allow() {
					admitted++
				}
				time.Sleep(time.Millisecond)
			}
			return admitted
		}
		allow(250)
		f.set(func(f *fakeCluster) { f.mu.delay = 0 })
		allow(450) // answers to requests sent before now are slow still
		rels := f.releases()
		if len(rels) == 0 {
			t.Fatal("no release of a lease no piece of which could be spent")
		}
		for _, r := range rels {
			if g := log.grants[r.GetLeaseId()]; r.GetUnused()[0] != g.Granted {
				t.Errorf("released %d of %d: every token of it is unused", r.GetUnused()[0], g.Granted)
			}
		}
		var logNow int64
		f.set(func(f *fakeCluster) { logNow = f.now() })
		for _, a := range f.acquires() {
			if a.req.GetTtlNs() > 0 && a.req.GetPacedAfterNs() > logNow {
				t.Errorf("an acquire asks for pieces after %v, past the log's time %v: after a lease it gave back",
					time.Duration(a.req.GetPacedAfterNs()), time.Duration(logNow))
			}
		}
		t.Logf("%d slow leases given back whole", len(rels))
	})
}

// TestWindowGivesBackPiecesItCouldNotSpend: pieces that ran out on the
// Limiter's clock unspent (its process stalled, or the cluster was away and
// the log's time stalled with it) are given back before the next Acquire,
// the untouched pieces from the end back and the rest of the last one
// touched, so that their buckets are free for the next lease.
func TestWindowGivesBackPiecesItCouldNotSpend(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 1)
		f.set(func(f *fakeCluster) { f.mu.piece = 100 * time.Millisecond })
		var log pieceLog
		c := f.dial(t, client.WithTrace(log.trace()))
		l := client.LeasingForTest(c.Limiter("w", client.Limit{Algorithm: client.SlidingWindow, Rate: 200, Per: time.Second}))
		spent := 0
		for range 250 {
			if l.Allow() {
				spent++
			}
			time.Sleep(time.Millisecond)
		}
		if len(log.grants) != 1 {
			t.Fatalf("%d leases in 250ms, want 1", len(log.grants))
		}
		// Stalled past the lease's end, then asked again.
		time.Sleep(2 * time.Second)
		l.Allow()
		time.Sleep(10 * time.Millisecond)
		rels := f.releases()
		if len(rels) != 1 {
			t.Fatalf("%d releases, want 1 of the stranded pieces", len(rels))
		}
		g := log.grants[rels[0].GetLeaseId()]
		got := rels[0].GetUnused()[0]
		// The lease's pieces after the 250ms were never touched; some of
		// its first pieces were spent.
		var untouched int64
		end := int64(g.LogTime + g.TTL)
		m := int64(g.Pieces)
		last := (end - 1) / int64(g.Piece)
		for i := range m {
			if b := (last - m + 1 + i) * int64(g.Piece); b >= int64(300*time.Millisecond) {
				untouched += limiter.Piece(g.Granted, m, i)
			}
		}
		t.Logf("lease of %d in %d pieces, %d spent; released %d", g.Granted, m, spent, got)
		if got < untouched || got > g.Granted-int64(spent) {
			t.Errorf("released %d: want at least the %d of the pieces never begun and at most the %d never spent", got, untouched, g.Granted-int64(spent))
		}
	})
}

// TestWindowLeasesWholeWhileRoundTripsAreSlow: with round trips longer than
// 3/4 of a bucket the Limiter asks for leases counted over their whole life,
// which it can spend, rather than pieces it could spend little or nothing
// of; once round trips are quick again it asks for pieces.
func TestWindowLeasesWholeWhileRoundTripsAreSlow(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 1)
		f.set(func(f *fakeCluster) {
			f.mu.piece = 100 * time.Millisecond
			f.mu.delay = 120 * time.Millisecond
		})
		c := f.dial(t)
		l := client.LeasingForTest(c.Limiter("w", client.Limit{Algorithm: client.SlidingWindow, Rate: 200, Per: time.Second}))
		allow := func(n int) (admitted int) {
			for range n {
				if l.Allow() {
					admitted++
				}
				time.Sleep(time.Millisecond)
			}
			return admitted
		}
		slow := allow(3000)
		var whole, paced int
		for _, a := range f.acquires() {
			if a.req.GetTtlNs() > 0 && a.req.GetPaced() {
				paced++
			} else if a.req.GetTtlNs() > 0 {
				whole++
			}
		}
		t.Logf("round trips of 120ms, buckets of 100ms: %d admitted in 3s; %d paced leases, %d whole", slow, paced, whole)
		if whole == 0 {
			t.Errorf("%d whole leases, %d admitted: with round trips longer than a bucket the Limiter should lease whole", whole, slow)
		}
		f.set(func(f *fakeCluster) { f.mu.delay = 0 })
		before := len(f.acquires())
		allow(5000)
		paced = 0
		for _, a := range f.acquires()[before:] {
			if a.req.GetTtlNs() > 0 && a.req.GetPaced() {
				paced++
			}
		}
		if paced == 0 {
			t.Error("no paced lease in 5s of quick round trips")
		}
	})
}

// TestWindowBackToPiecesSoonAfterOneSlowAnswer: one answer that took a
// second and more (across an election) moves a window's Limiter off pieces for a
// lease or two, not for a dozen: in a chaos run, a round-trip average that
// such an answer had inflated kept the window mostly on whole leases, at
// about half its limit, for 30 s after a full outage.
func TestWindowBackToPiecesSoonAfterOneSlowAnswer(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 1)
		f.set(func(f *fakeCluster) { f.mu.piece = 100 * time.Millisecond })
		c := f.dial(t)
		l := client.LeasingForTest(c.Limiter("w", client.Limit{Algorithm: client.SlidingWindow, Rate: 200, Per: time.Second}))
		allow := func(n int) {
			for range n {
				l.Allow()
				time.Sleep(time.Millisecond)
			}
		}
		allow(300)
		f.set(func(f *fakeCluster) { f.mu.delay = 1500 * time.Millisecond })
		allow(2000)
		f.set(func(f *fakeCluster) { f.mu.delay = 0 })
		before := len(f.acquires())
		allow(8000)
		var kinds []bool
		for _, a := range f.acquires()[before:] {
			if a.req.GetTtlNs() > 0 {
				kinds = append(kinds, a.req.GetPaced())
			}
		}
		t.Logf("leases after the slow answer, paced or not: %v", kinds)
		whole := 0
		for _, paced := range kinds {
			if paced {
				break
			}
			whole++
		}
		// Capped at two buckets, one sample takes four quick answers to
		// wear off; uncapped, a 1.5s one took eleven.
		if whole == len(kinds) || whole > 4 {
			t.Errorf("%d whole leases before the first paced one after a single slow answer (of %d); want at most 4", whole, len(kinds))
		}
	})
}

// TestWindowSpendsPiecesWithinTheReportedBracket: round trips longer than a
// bucket, most of them the leader's (its disk, the Raft commit: issue 14's
// loaded chaos runs), still leave pieces to spend once the leader reports
// how long it held the request before and after the stamp: the Limiter
// stays on pieces, spends each within its bucket of log time, and admits
// about what it admits with quick round trips. Without the report, the same
// round trips put it on whole leases, which cost a real window twice their
// tokens (the fake counts them as a bucket would). The leader's share is
// uneven (80 ms before the stamp, 40 ms after), so that a bracket taken the
// wrong way round spends outside the buckets.
func TestWindowSpendsPiecesWithinTheReportedBracket(t *testing.T) {
	run := func(t *testing.T, delay, replyDelay time.Duration, report bool) (allowed, paced, whole int) {
		synctest.Test(t, func(t *testing.T) {
			f := newFake(t, 1)
			f.set(func(f *fakeCluster) {
				f.mu.piece = 100 * time.Millisecond
				f.mu.delay, f.mu.replyDelay = delay, replyDelay
				f.mu.reportHeld = report
			})
			var log pieceLog
			c := f.dial(t, client.WithTrace(log.trace()))
			l := client.LeasingForTest(c.Limiter("w", client.Limit{Algorithm: client.SlidingWindow, Rate: 200, Per: time.Second}))
			for range 6000 {
				if l.Allow() {
					allowed++
				}
				time.Sleep(time.Millisecond)
			}
			log.check(t, f.start)
			for _, a := range f.acquires() {
				if a.req.GetTtlNs() > 0 && a.req.GetPaced() {
					paced++
				} else if a.req.GetTtlNs() > 0 {
					whole++
				}
			}
		})
		return allowed, paced, whole
	}
	quick, _, _ := run(t, 0, 0, false)
	allowed, paced, whole := run(t, 80*time.Millisecond, 40*time.Millisecond, true)
	_, _, unreported := run(t, 80*time.Millisecond, 40*time.Millisecond, false)
	t.Logf("buckets of 100 ms, 6 s: %d admitted with quick round trips; round trips of 120 ms (80 + 40 the leader's), reported: %d admitted, %d paced leases, %d whole; not reported: %d whole",
		quick, allowed, paced, whole, unreported)
	if whole > 0 {
		t.Errorf("%d whole leases: the reported bracket leaves pieces of 100 ms spendable", whole)
	}
	if allowed < quick*8/10 {
		t.Errorf("%d admitted, %d with quick round trips: pieces are lost to the round trip", allowed, quick)
	}
	if unreported == 0 {
		t.Errorf("no whole lease with the same round trips unreported: the test does not exercise the bracket")
	}
}

// TestWindowSpendsNoPieceAfterItsLeaseLife: the bracket the leader reports
// lets a piece run to lo + its bucket's end, but never past the lease's own
// life, Sent + TTL: a lease's life counts from when it was asked for. With
// 80 ms queued before the stamp, a last piece with tokens left outlived its
// lease by up to 80 ms (the chaos run's lease-expiry check caught it). The
// window is far from full here, so every piece has tokens to its end.
func TestWindowSpendsNoPieceAfterItsLeaseLife(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 1)
		f.set(func(f *fakeCluster) {
			f.mu.piece = 100 * time.Millisecond
			f.mu.delay, f.mu.replyDelay = 80*time.Millisecond, 40*time.Millisecond
			f.mu.reportHeld = true
		})
		var log pieceLog
		c := f.dial(t, client.WithTrace(log.trace()))
		l := client.LeasingForTest(c.Limiter("w", client.Limit{Algorithm: client.SlidingWindow, Rate: 100_000, Per: time.Second}))
		for range 5000 {
			l.Allow()
			time.Sleep(time.Millisecond)
		}
		pieced, admitted := log.check(t, f.start)
		t.Logf("%d pieced leases, %d admissions from them", pieced, admitted)
		if pieced < 2 {
			t.Fatalf("%d pieced leases: the limiter should lease in pieces", pieced)
		}
	})
}

// retriedLease returns the lease granted to the first Acquire the fake saw
// more than once (a retry, same seq) that was granted with pieces, the
// tokens spent from it, and whether there was one.
func retriedLease(f *fakeCluster, log *pieceLog) (info client.AcquireDoneInfo, spent int64, ok bool) {
	attempts := map[uint64]int{}
	for _, a := range f.acquires() {
		attempts[a.req.GetSeq()]++
	}
	log.mu.Lock()
	defer log.mu.Unlock()
	for _, g := range log.grants {
		if attempts[g.Seq] > 1 && g.Pieces > 0 && (!ok || g.Seq < info.Seq) {
			info, ok = g, true
		}
	}
	for _, a := range log.admits {
		if ok && a.lease == info.LeaseID {
			spent += a.n
		}
	}
	return info, spent, ok
}

// TestWindowRetriedAcquireAfterALeaderChangeKeepsItsPieces: an Acquire
// whose first attempts found no leader (an election of 300 ms) and that the
// new leader then decided is bracketed from the attempt that leader
// decided, which the answer says (decided): its pieces are spent. Before,
// every retry's answer was bracketed from the first send, 300 ms and more
// wide for buckets of 100 ms, so the lease was given back whole: tokens the
// cluster granted went unused. A node that does not say still gets the old
// treatment. Every admission stays in its piece's bucket, within the
// lease's life from its first send.
func TestWindowRetriedAcquireAfterALeaderChangeKeepsItsPieces(t *testing.T) {
	run := func(t *testing.T, oldNode bool) (info client.AcquireDoneInfo, spent int64) {
		synctest.Test(t, func(t *testing.T) {
			f := newFake(t, 2)
			f.set(func(f *fakeCluster) {
				f.mu.piece = 100 * time.Millisecond
				f.mu.delay, f.mu.replyDelay = 80*time.Millisecond, 40*time.Millisecond
				f.mu.reportHeld, f.mu.oldNode, f.mu.leaderAddr = true, oldNode, true
			})
			var log pieceLog
			c := f.dial(t, client.WithTrace(log.trace()))
			l := client.LeasingForTest(c.Limiter("w", client.Limit{Algorithm: client.SlidingWindow, Rate: 200, Per: time.Second}))
			// The election: from 1 s, until 300 ms after the first
			// Acquire that found no leader (an Allow may wait for it).
			done := f.election(time.Second, 300*time.Millisecond)
			for range 5000 {
				l.Allow()
				time.Sleep(time.Millisecond)
			}
			<-done
			log.check(t, f.start)
			var ok bool
			info, spent, ok = retriedLease(f, &log)
			if !ok {
				for _, a := range f.acquires() {
					t.Logf("acquire seq %d node %d at %v paced %v", a.req.GetSeq(), a.node, a.at, a.req.GetPaced())
				}
				t.Fatal("no Acquire was retried across the election and granted in pieces: the test does not exercise a retry")
			}
		})
		return info, spent
	}
	info, spent := run(t, false)
	old, oldSpent := run(t, true)
	t.Logf("retried across an election: %d of %d granted spent (%d pieces, decided %v); from a node that does not say: %d of %d",
		spent, info.Granted, info.Pieces, info.Decided, oldSpent, old.Granted)
	// How much of the lease its life leaves depends on where in its
	// first piece the retry was stamped, which the schedule decides: 72
	// to 161 of 200 in 240 runs here (the old bracket spent none). A
	// quarter separates the two; half failed on a late retry, in CI's
	// shape of load.
	if !info.Decided || spent < info.Granted/4 {
		t.Errorf("the retried lease: decided %v, %d of %d spent; want at least a quarter spent (the bracket from the first send spends none)",
			info.Decided, spent, info.Granted)
	}
	if old.Decided || oldSpent > 0 {
		t.Errorf("from a node that does not say: decided %v, %d spent; want none, the old bracket from the first send", old.Decided, oldSpent)
	}
}

// TestWindowRememberedAnswerSpendsNoPieceOutsideItsBucket: the answer to
// a retry that the cluster remembered from an earlier entry (the first
// attempt applied, its answer lost) is bracketed from the first send: that
// entry was stamped before the retry was sent, 300 ms before here. Placed
// from the retry's send, its pieces would end up to 300 ms late, and the
// tokens of pieces left idle would be spent in a later bucket beside that
// bucket's own. Demand comes in bursts every fourth bucket, so a piece
// that outlives its bucket shows as a burst that spends more than one
// piece holds. The remembered lease is spent from, so the check has
// something to check.
func TestWindowRememberedAnswerSpendsNoPieceOutsideItsBucket(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(t, 2)
		f.set(func(f *fakeCluster) {
			f.mu.piece = 100 * time.Millisecond
			f.mu.replyDelay = 300 * time.Millisecond
			f.mu.reportHeld, f.mu.leaderAddr = true, true
		})
		var log pieceLog
		c := f.dial(t, client.WithTrace(log.trace()))
		l := client.LeasingForTest(c.Limiter("w", client.Limit{Algorithm: client.SlidingWindow, Rate: 200, Per: time.Second}))
		for i := range 5000 {
			if i == 1000 {
				f.set(func(f *fakeCluster) { f.mu.failApplied = 1 })
			}
			if time.Since(f.start)/(100*time.Millisecond)%4 == 0 {
				for range 5 {
					l.Allow()
				}
			}
			time.Sleep(time.Millisecond)
		}
		log.check(t, f.start)
		info, spent, ok := retriedLease(f, &log)
		t.Logf("remembered answer: %d of %d granted spent (%d pieces, decided %v)", spent, info.Granted, info.Pieces, info.Decided)
		if !ok || info.Decided || spent == 0 {
			t.Errorf("retried lease found %v, decided %v, %d spent: want a remembered answer spent from", ok, info.Decided, spent)
		}
	})
}

// TestWindowPiecesAcrossAnElectionStayOnTheirLeadersImage is the SDK's half
// of the argument that a window's pieces cannot over-admit across an
// election (fsm/DESIGN.md, "Across elections"): every piece is spent within
// its bucket as the leader that stamped it would have counted it, whatever
// came after. One Limiter holds pieces placed before a 400 ms election that
// log time loses (the fake's log stalls) and spends them through it and
// after, on the old leader's image of the buckets; another, asking only
// after the election, spends its pieces on the new leader's, 400 ms later.
// Each admission must lie in its own lease's image, and both must be
// spending in the same real window after the election.
func TestWindowPiecesAcrossAnElectionStayOnTheirLeadersImage(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const (
			down   = time.Second
			outage = 400 * time.Millisecond
		)
		f := newFake(t, 2)
		f.set(func(f *fakeCluster) { f.mu.piece = 50 * time.Millisecond })
		// Leases of 300ms, shorter than the outage: a piece spent on the
		// wrong leader's image falls outside its lease's buckets.
		lim := client.Limit{Algorithm: client.SlidingWindow, Rate: 200, Per: time.Second, MaxLease: 300 * time.Millisecond}
		// Each lease's answer time: one answered after the election was
		// stamped by the new leader, whose log lags by the outage.
		var mu sync.Mutex
		recv := map[uint64]time.Duration{}
		traced := func(p *pieceLog) client.Option {
			tr := p.trace()
			done := tr.AcquireDone
			tr.AcquireDone = func(i client.AcquireDoneInfo) {
				mu.Lock()
				recv[i.LeaseID] = time.Since(f.start)
				mu.Unlock()
				done(i)
			}
			return client.WithTrace(tr)
		}
		var logA, logB pieceLog
		a := client.LeasingForTest(f.dial(t, traced(&logA)).Limiter("w", lim))
		b := client.LeasingForTest(f.dial(t, traced(&logB)).Limiter("w", lim))
		lag := func(lease uint64) time.Duration {
			mu.Lock()
			defer mu.Unlock()
			if recv[lease] >= down {
				return outage
			}
			return 0
		}
		var duringA, afterA, afterB int
		for ms := range 3000 {
			now := time.Duration(ms) * time.Millisecond
			switch now {
			case down:
				// The log stalls from here for the outage (now() stays at
				// the committed maximum), and no node leads.
				f.set(func(f *fakeCluster) { f.mu.lag, f.mu.leader = outage, -1 })
			case down + outage:
				f.set(func(f *fakeCluster) { f.mu.leader = 1 })
			}
			if a.Allow() {
				switch {
				case now >= down && now < down+outage:
					duringA++
				case now >= down+outage:
					afterA++
				}
			}
			// After the election, to the end of the run (1.6s): a lessee
			// that tried during the outage retries after a full-jitter
			// backoff of up to a second (conn.go), so A may take a grant
			// only late in it: counting the first 500ms alone failed a CI
			// run with A's 0.
			if now >= down+outage && b.Allow() {
				afterB++
			}
			time.Sleep(time.Millisecond)
		}
		piecedA, admittedA := logA.checkLagged(t, f.start, lag)
		piecedB, admittedB := logB.checkLagged(t, f.start, lag)
		t.Logf("A: %d pieced leases, %d admissions from them, %d during the election, %d after it; B: %d pieced, %d admissions, %d after it",
			piecedA, admittedA, duringA, afterA, piecedB, admittedB, afterB)
		if duringA == 0 || afterA == 0 || afterB == 0 {
			t.Errorf("the lessee of before the election should spend through it and after it, beside the one of after it")
		}
	})
}
