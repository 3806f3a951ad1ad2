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
	maxInflight = 4
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
}

// submitFunc stamps cmds and hands them to Raft as one entry. It returns
// false, having proposed nothing, if the node is not a ready leader.
type submitFunc func(cmds []fsm.Command) (raft.ApplyFuture, bool)

// batcher packs the writes proposed on a leader into Raft entries (group
// commit). One goroutine (run) seals batches and hands them to Raft in queue
// order, so the stamps taken at sealing are non-decreasing in log order;
// a collector goroutine per entry in flight waits for its future and answers
// each request with its own result. A lone request is sealed at once; requests
// accumulate only while maxInflight entries are in flight. It never arms a
// timer, and reads the clock only for its metrics (time queued, time to
// commit): no decision depends on it. It is safe for concurrent use.
type batcher struct {
	submit  submitFunc
	metrics *nodeMetrics // nil: none; set before run
	stop    <-chan struct{}
	kick    chan struct{} // capacity 1: the queue or the in-flight count changed

	mu struct {
		sync.Mutex
		queue    []*request
		inflight int
	}
}

func newBatcher(submit submitFunc, stop <-chan struct{}) *batcher {
	return &batcher{submit: submit, stop: stop, kick: make(chan struct{}, 1)}
}

// enqueue adds r to the queue and wakes the batcher. r must not be queued or
// in flight.
func (b *batcher) enqueue(r *request) {
	r.queued = time.Now()
	b.mu.Lock()
	r.proposed, r.withdrawn = false, false
	b.mu.queue = append(b.mu.queue, r)
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

func (b *batcher) wake() {
	select {
	case b.kick <- struct{}{}:
	default:
	}
}

// run seals and submits batches until stop is closed. Requests still queued
// then are left to their callers, which watch stop too.
func (b *batcher) run() {
	for {
		select {
		case <-b.stop:
			return
		case <-b.kick:
		}
		for b.sealOne() {
		}
	}
}

// sealOne takes the next batch from the queue, if a pipeline slot is free,
// and submits it. It reports whether it took one.
func (b *batcher) sealOne() bool {
	b.mu.Lock()
	if b.mu.inflight >= maxInflight {
		b.mu.Unlock()
		return false
	}
	var (
		batch []*request
		bytes int
		taken int
	)
	for _, r := range b.mu.queue {
		if len(batch) == maxBatchCommands || len(batch) > 0 && bytes+r.size > maxBatchBytes {
			break
		}
		taken++
		if r.withdrawn {
			continue
		}
		r.proposed = true
		batch = append(batch, r)
		bytes += r.size
	}
	clear(b.mu.queue[:taken]) // drop the references for the GC
	b.mu.queue = b.mu.queue[taken:]
	if len(b.mu.queue) == 0 {
		b.mu.queue = nil
	}
	if len(batch) == 0 {
		b.mu.Unlock()
		return taken > 0
	}
	b.mu.inflight++
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
	f, ok := b.submit(cmds)
	if !ok {
		b.mu.Lock()
		for _, r := range batch {
			r.proposed = false
		}
		b.mu.inflight--
		b.mu.Unlock()
		for _, r := range batch {
			r.done <- outcome{err: errNotProposed}
		}
		return true
	}
	go b.collect(f, batch, start)
	return true
}

// collect waits for one entry's future and answers each of its requests: all
// with the entry's error, or each with its own result. hashicorp/raft may
// leave a committed entry's future unresolved when it shuts down; the
// requests still return (their callers watch the node's stop channel), only
// this goroutine stays blocked (DESIGN.md, "Errors of a write").
func (b *batcher) collect(f raft.ApplyFuture, batch []*request, start time.Time) {
	err := f.Error()
	if m := b.metrics; m != nil && err == nil {
		m.commitSeconds.Observe(time.Since(start).Seconds())
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
	for i, r := range batch {
		if err != nil {
			r.done <- outcome{err: err}
		} else {
			r.done <- outcome{res: results[i]}
		}
	}
	b.mu.Lock()
	b.mu.inflight--
	b.mu.Unlock()
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
