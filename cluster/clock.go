package cluster

import "time"

// logClock turns a leader's monotonic clock into log time (DESIGN.md
// invariant 1). A leader starts it once its post-election Barrier has applied
// every earlier entry, with the machine's log time then (tBase) and its
// monotonic reading then (mBase), and stamps each command with
//
//	T = max(T_last, tBase + (Monotonic() - mBase))
//
// so stamps never go backwards, even if the monotonic source does, and the
// time between the previous leader's last entry and this leader's barrier (an
// election, a restart of the whole cluster) is never credited. It is plain
// data; the Node guards it with a mutex.
type logClock struct {
	ready bool
	// term is the Raft term the clock was started in; a stamp is valid only
	// while the node is leader in that term.
	term  uint64
	tBase int64         // log time at the barrier, nanoseconds
	mBase time.Duration // monotonic reading at the barrier
	last  int64         // the last stamp handed out in this term
}

// start makes the clock ready for term, counting from log time tBase at
// monotonic reading mBase.
func (c *logClock) start(term uint64, tBase int64, mBase time.Duration) {
	*c = logClock{ready: true, term: term, tBase: tBase, mBase: mBase, last: tBase}
}

// stop makes the clock not ready: leadership is lost or being regained.
func (c *logClock) stop() { c.ready = false }

// stamp returns the log time for a command proposed at monotonic reading m.
// A reading before mBase counts as no time passed; the sum saturates rather
// than overflow.
func (c *logClock) stamp(m time.Duration) int64 {
	const maxInt64 = 1<<63 - 1
	var elapsed int64
	if m > c.mBase {
		elapsed = int64(m - c.mBase)
		if elapsed < 0 { // the difference overflowed
			elapsed = maxInt64
		}
	}
	t := c.tBase + elapsed
	if t < c.tBase {
		t = maxInt64
	}
	c.last = max(c.last, t)
	return c.last
}
