package cluster

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/leasehold/leasehold/fsm"
)

// Batching limits (DESIGN.md, "The write path: group commit").
const (
	// maxBatchCommands is the most commands one Raft entry carries.
	maxBatchCommands = 1024
	// maxBatchBytes bounds the encoded size of one Raft entry; commands are
	// counted at their encodedSizeBound, so the real entry is smaller.
	maxBatchBytes = 1 << 20
	// maxInflight is the most entries handed to Raft and not yet answered.
	// While that many are in flight, new requests accumulate in the queue.
	// It bounds the collectors; the disk, not this count, normally decides
	// when a batch is sealed (see batcher).
	maxInflight = 4
	// maxLinger bounds how long a batch smaller than expected waits for
	// the callers answered since the last seal (batcher.lingerLocked).
	maxLinger = time.Millisecond
)

var (
	// errNotProposed is a request's outcome when the batcher found the node
	// not ready to stamp as it sealed the request's batch: nothing was
	// proposed, and the request waits for readiness and enqueues again.
	errNotProposed = errors.New("not proposed: the node is not a ready leader")
	// errBadResponse wraps a committed entry whose Apply response is not one
	// result per command: a bug, not an unknown outcome.
	errBadResponse = errors.New("unexpected apply response")
)

// request is one write waiting in the batcher. The proposer owns cmd and
// done; proposed and withdrawn are guarded by the batcher's mutex.
type request struct {
	cmd    fsm.Command
	size   int       // encodedSizeBound(cmd)
	queued time.Time // when it was last enqueued
	// done receives exactly one outcome per enqueue: the command's result,
	// the error of its entry, or errNotProposed.
	done chan outcome

	proposed  bool // taken into a batch that was (or is being) handed to Raft
	withdrawn bool // its caller stopped waiting before it was proposed
}

func newRequest(c fsm.Command) *request {
	return &request{cmd: c, size: encodedSizeBound(c), done: make(chan outcome, 1)}
}

// outcome is what a request learns: its result, or why there is none.
type outcome struct {
	res fsm.Result
	err error
	// stamped is the node's monotonic reading when the entry that carried
	// the request was stamped (Config.Monotonic); set with res.
	stamped time.Duration
}

// submitFunc stamps cmds and hands them to Raft as one entry, and returns the
// monotonic reading it stamped at. It returns false, having proposed
// nothing, if the node is not a ready leader.
type submitFunc func(cmds []fsm.Command) (f raft.ApplyFuture, stamped time.Duration, ok bool)

// batcher packs the writes proposed on a leader into Raft entries (group
// commit). One goroutine (run) seals batches and hands them to Raft in queue
// order, so the stamps taken at sealing are non-decreasing in log order;
// a collector goroutine per entry in flight waits for its future and answers
// each request with its own result.
//
// The disk sets the pace: a batch that is not full is sealed only when no
// entry it handed to Raft is still waiting for the leader's own log write
// (stored reports those writes). A lone request on an idle leader is
// therefore sealed at once; requests that arrive while an entry is being
// written accumulate and go out together when the write ends, while the
// previous entry replicates. A full batch is sealed at once. At most
// maxInflight entries are in flight in any case.
//
// The callers just answered are waited for: a batch smaller than the
// commands answered since the last batch was sealed plus those in flight
// waits, at most half a commit time (and maxLinger) after its oldest
// request was queued, for the rest to come back (linger). Closed-loop
// callers so go out together, one entry per round instead of a lone early
// one and the rest behind it, and callers split over two entries merge
// into one; a caller alone is never held, since its batch already holds as
// many as were answered since the last seal. The clock decides only that
// wait, never a stamp. It is safe for concurrent use.
type batcher struct {
	submit  submitFunc
	metrics *nodeMetrics // nil: none; set before run
	stop    <-chan struct{}
	kick    chan struct{} // capacity 1: the queue or the in-flight count changed

	mu struct {
		sync.Mutex
		queue    []*request
		inflight int
		// inflightCommands counts the commands of the entries in flight.
		inflightCommands int
		// unwritten are the entries handed to Raft, in that order, that
		// the leader has not yet written to its log and that are not yet
		// answered.
		unwritten []*entry
		// answered counts the commands answered with a result since the
		// last batch was sealed: their callers, if they come back, are
		// not in any batch yet.
		answered int
		// commit is the time the entry answered last took from its
		// sealing to its answer; 0 before any. A batch smaller than
		// expected may wait half of it, at most maxLinger (lingerLocked).
		commit time.Duration
	}
}

// entry is one Raft entry the batcher handed to Raft, until it is written to
// the leader's log or answered.
type entry struct{ commands int }

func newBatcher(submit submitFunc, stop <-chan struct{}) *batcher {
	return &batcher{submit: submit, stop: stop, kick: make(chan struct{}, 1)}
}

// enqueue adds rs to the queue, in order, as one arrival (the batcher sees
// all of them or none), and wakes the batcher. None may be queued or in
// flight.
func (b *batcher) enqueue(rs ...*request) {
	now := time.Now()
	b.mu.Lock()
	for _, r := range rs {
		r.queued = now
		r.proposed, r.withdrawn = false, false
		b.mu.queue = append(b.mu.queue, r)
	}
	b.mu.Unlock()
	b.wake()
}

// withdraw takes r out of the queue if it has not been proposed, and reports
// whether it was not: true means its command will never reach the log (in
// this enqueue), false that it was or is being handed to Raft, so its
// outcome is unknown until its entry is answered.
func (b *batcher) withdraw(r *request) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if r.proposed {
		return false
	}
	r.withdrawn = true // skipped, and dropped, when the batcher reaches it
	return true
}

// stored tells the batcher that the leader wrote n of the entries it handed
// to Raft to its own log (in the order they were handed over; Raft keeps
// it). It is called from Raft's goroutine after each log write of the
// leader; n counts the write's command entries, which only the batcher
// proposes.
func (b *batcher) stored(n int) {
	b.mu.Lock()
	n = min(n, len(b.mu.unwritten))
	clear(b.mu.unwritten[:n])
	b.mu.unwritten = b.mu.unwritten[n:]
	if len(b.mu.unwritten) == 0 {
		b.mu.unwritten = nil
	}
	b.mu.Unlock()
	if n > 0 {
		b.wake()
	}
}

// forget drops e from the unwritten entries, if it is there: it was
// answered, so it is not waiting for the disk any more.
func (b *batcher) forget(e *entry) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for i, u := range b.mu.unwritten {
		if u == e {
			b.mu.unwritten = append(b.mu.unwritten[:i], b.mu.unwritten[i+1:]...)
			return
		}
	}
}

func (b *batcher) wake() {
	select {
	case b.kick <- struct{}{}:
	default:
	}
}

// run seals and submits batches until stop is closed. Requests still queued
// then are left to their callers, which watch stop too.
func (b *batcher) run() {
	linger := time.NewTimer(time.Hour)
	linger.Stop()
	defer linger.Stop()
	for {
		select {
		case <-b.stop:
			return
		case <-b.kick:
		case <-linger.C:
		}
		for {
			took, wait := b.sealOne()
			if wait > 0 {
				linger.Reset(wait)
			}
			if !took {
				break
			}
		}
	}
}

// sealOne takes the next batch from the queue and submits it, if a slot is
// free, and either the batch is full, or no entry waits for the leader's log
// write and the batch need not linger for the callers answered last. It
// reports whether it took one, and, if the batch lingers, for how long at
// most.
func (b *batcher) sealOne() (took bool, wait time.Duration) {
	b.mu.Lock()
	if b.mu.inflight >= maxInflight {
		b.mu.Unlock()
		return false, 0
	}
	var (
		batch []*request
		bytes int
		taken int
		full  bool
	)
	for _, r := range b.mu.queue {
		if len(batch) == maxBatchCommands || len(batch) > 0 && bytes+r.size > maxBatchBytes {
			full = true
			break
		}
		taken++
		if r.withdrawn {
			continue
		}
		batch = append(batch, r)
		bytes += r.size
	}
	if !full && len(batch) > 0 && len(b.mu.unwritten) > 0 {
		// The leader's disk is busy with an earlier entry: let the batch
		// grow until that write ends (stored wakes the batcher).
		b.mu.Unlock()
		return false, 0
	}
	if linger := b.lingerLocked(); !full && len(batch) > 0 && linger > 0 {
		now := time.Now()
		if w := linger - now.Sub(batch[0].queued); w > 0 && len(batch) < b.mu.answered+b.mu.inflightCommands {
			// The callers answered last are coming back: wait for
			// them (enqueue wakes the batcher), or until w passes.
			b.mu.Unlock()
			return false, w
		}
	}
	for _, r := range batch {
		r.proposed = true
	}
	clear(b.mu.queue[:taken]) // drop the references for the GC
	b.mu.queue = b.mu.queue[taken:]
	if len(b.mu.queue) == 0 {
		b.mu.queue = nil
	}
	if len(batch) == 0 {
		b.mu.Unlock()
		return taken > 0, 0
	}
	b.mu.inflight++
	b.mu.inflightCommands += len(batch)
	b.mu.answered = 0 // whoever of them came back is in this batch
	e := &entry{commands: len(batch)}
	// Counted as unwritten before Raft can write it, so that stored never
	// runs ahead of it.
	b.mu.unwritten = append(b.mu.unwritten, e)
	b.mu.Unlock()

	cmds := make([]fsm.Command, len(batch))
	for i, r := range batch {
		cmds[i] = r.cmd
	}
	start := time.Now()
	if m := b.metrics; m != nil {
		for _, r := range batch {
			m.queueSeconds.Observe(start.Sub(r.queued).Seconds())
		}
		m.batchCommands.Observe(float64(len(batch)))
	}
	f, stamped, ok := b.submit(cmds)
	if !ok {
		b.forget(e)
		b.mu.Lock()
		for _, r := range batch {
			r.proposed = false
		}
		b.mu.inflight--
		b.mu.inflightCommands -= len(batch)
		b.mu.Unlock()
		for _, r := range batch {
			r.done <- outcome{err: errNotProposed}
		}
		return true, 0
	}
	go b.collect(f, e, batch, start, stamped)
	return true, 0
}

// lingerLocked returns how long a batch smaller than expected may wait
// after its oldest request was queued: half the last commit time, at most
// maxLinger.
func (b *batcher) lingerLocked() time.Duration { return min(b.mu.commit/2, maxLinger) }

// answeredLocked records that an entry of n commands was answered with its
// results, after committing in d.
func (b *batcher) answeredLocked(n int, d time.Duration) {
	b.mu.answered += n
	b.mu.commit = d
}

// collect waits for one entry's future and answers each of its requests: all
// with the entry's error, or each with its own result. hashicorp/raft may
// leave a committed entry's future unresolved when it shuts down; the
// requests still return (their callers watch the node's stop channel), only
// this goroutine stays blocked (DESIGN.md, "Errors of a write"). stamped is
// the monotonic reading the entry was stamped at, for each result.
func (b *batcher) collect(f raft.ApplyFuture, e *entry, batch []*request, start time.Time, stamped time.Duration) {
	err := f.Error()
	b.forget(e)
	now := time.Now()
	if m := b.metrics; m != nil && err == nil {
		m.commitSeconds.Observe(now.Sub(start).Seconds())
	}
	var results []fsm.Result
	if err == nil {
		var ok bool
		results, ok = f.Response().([]fsm.Result)
		if !ok || len(results) != len(batch) {
			err = fmt.Errorf("%w: apply returned %T with %d results; want %d",
				errBadResponse, f.Response(), len(results), len(batch))
		}
	}
	// Counted as answered before any caller hears: one that came back
	// before this bookkeeping would find its entry still in flight, and
	// the next batch would count it twice and linger for nobody.
	b.mu.Lock()
	b.mu.inflight--
	b.mu.inflightCommands -= len(batch)
	if err == nil {
		b.answeredLocked(len(batch), now.Sub(start))
	}
	b.mu.Unlock()
	for i, r := range batch {
		if err != nil {
			r.done <- outcome{err: err}
		} else {
			r.done <- outcome{res: results[i], stamped: stamped}
		}
	}
	b.wake()
}

// encodeEntry encodes cmds, stamped with log time now, as one Raft entry: a
// lone command as itself, several as an fsm.Batch.
func encodeEntry(now int64, cmds []fsm.Command) []byte {
	if len(cmds) == 1 {
		return fsm.Encode(make([]byte, 0, entryOverhead+encodedSizeBound(cmds[0])), now, cmds[0])
	}
	size := entryOverhead
	for _, c := range cmds {
		size += encodedSizeBound(c)
	}
	return fsm.Encode(make([]byte, 0, size), now, &fsm.Batch{Commands: cmds})
}

// Upper bounds of encoded sizes, in bytes, for the fsm command codec (a
// protobuf wire encoding, command.proto). Every field number is below 16, so
// a tag is one byte; a varint is at most 10 bytes.
const (
	varintField = 1 + binary.MaxVarintLen64
	// entryOverhead is the entry's type byte and time field.
	entryOverhead = 1 + varintField
	// subOverhead is a sub-command's tag and length inside a Batch.
	subOverhead = 1 + binary.MaxVarintLen64
	// limitSize is an encoded Limit message with its tag and length: eight
	// varint fields (88 bytes) need a one-byte length.
	limitSize = 1 + 1 + 8*varintField
)

// encodedSizeBound returns an upper bound of c's size inside an fsm.Batch
// entry: its tag and length there, its type byte and its fields. It bounds
// c's size as an entry of its own too, less entryOverhead. The tests check
// the bound against fsm.Encode.
func encodedSizeBound(c fsm.Command) int {
	str := func(s string) int { return 1 + protowire.SizeVarint(uint64(len(s))) + len(s) }
	n := subOverhead + 1
	switch c := c.(type) {
	case *fsm.SetLimit:
		n += str(c.Key) + limitSize
	case *fsm.DeleteLimit:
		n += str(c.Key)
	case *fsm.DeleteLimits:
		n += str(c.Prefix) + str(c.StartAfter) + varintField // unpinned only
	case *fsm.Acquire:
		n += str(c.ClientID) + 3*varintField // seq, acked below, TTL
		for _, it := range c.Items {
			item := str(it.Key) + 2*varintField // count, want
			if it.Limit != nil {
				item += limitSize
			}
			n += 1 + protowire.SizeVarint(uint64(item)) + item
		}
	case *fsm.Release:
		n += str(c.ClientID) + 3*varintField // seq, acked below, lease id
		if len(c.Unused) > 0 {
			packed := len(c.Unused) * binary.MaxVarintLen64
			n += 1 + protowire.SizeVarint(uint64(packed)) + packed
		}
	case *fsm.Charge:
		n += str(c.ClientID) + 2*varintField // seq, acked below
		for _, it := range c.Items {
			item := str(it.Key) + varintField // tokens
			if it.Limit != nil {
				item += limitSize
			}
			n += 1 + protowire.SizeVarint(uint64(item)) + item
		}
	case *fsm.Extend:
		n += str(c.ClientID) + 4*varintField // seq, acked below, lease id, TTL
	case *fsm.Restrict:
		n += str(c.ClientID) + 2*varintField // seq, acked below
		for _, it := range c.Items {
			item := str(it.Key) + 2*varintField // remaining, block
			if it.Limit != nil {
				item += limitSize
			}
			n += 1 + protowire.SizeVarint(uint64(item)) + item
		}
	default:
		panic(fmt.Sprintf("cluster: encodedSizeBound of %T", c))
	}
	return n
}
