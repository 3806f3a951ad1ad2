package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"

	"github.com/leasehold/leasehold/fsm"
	"github.com/leasehold/leasehold/internal/ratelog"
	"github.com/leasehold/leasehold/transport"
)

const (
	// snapshotsRetained is how many snapshots the snapshot store keeps.
	snapshotsRetained = 2
	// storeLockTimeout bounds the wait for the store's file lock: a second
	// node on the same Dir fails instead of hanging.
	storeLockTimeout = time.Second
	// transportTimeout is the I/O deadline of one Raft RPC.
	transportTimeout = 10 * time.Second
	// transportMaxPool is how many idle connections are kept per peer.
	transportMaxPool = 3
	// transportMaxRPCsInFlight 1 turns hashicorp/raft's pipelined
	// replication off: the leader sends each follower one AppendEntries at
	// a time. The pipeline can deadlock: when a follower answers Success
	// false (a leadership change), the pipeline's response reader stops,
	// and the sender can still start one more send that waits forever on
	// the decoder, which waits forever on the stopped reader. That
	// follower then gets no entry again (heartbeats still flow, so no
	// election repairs it), and Shutdown waits for the stuck goroutine
	// forever: TestBatchesAcrossLeaderChange hung so once in about 110
	// runs of the package under the race detector, and a CI run timed out
	// in this package. With up to 1024 commands per entry the pipeline
	// bought nothing measurable (DESIGN.md, "Replication without the
	// pipeline").
	transportMaxRPCsInFlight = 1
)

// errClosed is returned internally when the node closes while a request waits.
var errClosed = errors.New("node closed")

// Node is one Leasehold node: a hashicorp/raft member whose replicated state
// is an fsm.Machine, with hashicorp/raft-wal as its log and raft-boltdb
// (bbolt) as its stable store. As
// leader it stamps every command with log time and answers writes only after
// they are committed and applied; as follower it answers writes and GetLimit
// with a *transport.NotLeaderError naming the leader. It implements
// transport.Service. It is safe for concurrent use.
type Node struct {
	cfg       Config // with defaults
	log       *slog.Logger
	advertise string
	raft      *raft.Raft
	fsm       *machineFSM
	store     *raftboltdb.BoltStore
	stable    *raftStable // store as raft writes it (raftStable)
	logs      *logStore   // the Raft log (a WAL) behind a cache, reporting writes to batch
	trans     *raft.NetworkTransport
	stream    *streamLayer     // raft's connections, closed at shutdown
	secure    *secureTransport // Raft over mutual TLS; nil without Config.TLS
	// routes are where members are dialed in place of their configured
	// Raft addresses (routes.go); nil without Config.Gossip.
	routes *peerRoutes

	// mem is the node's membership (gossip, autopilot); nil without
	// Config.Gossip.
	mem *membership
	// gate is a static replacement's vote gate, opened once it has caught
	// up (votegate.go); nil otherwise (membership keeps a fresh node's).
	gate *voteGate

	metrics  *nodeMetrics // nil: none
	activity *activity
	disk     diskCheck
	// fullLog paces the warnings of requests refused at a cap (caps.go).
	fullLog *ratelog.Limiter
	// sweepNudged is the Monotonic reading (ns) of the last nudgeSweep.
	sweepNudged atomic.Int64
	// opened is set once Open has made raft: the metrics' gauges read it.
	opened atomic.Bool
	// sendLevel is the command level this node sends commands at when it
	// leads (level.go): with gossip, the least level the servers of the
	// configuration gossip, kept by the membership loop (0 until it has
	// seen them); without gossip, commandLevel (no node can know the
	// others' builds: README's upgrade order applies).
	sendLevel atomic.Int32

	// batch packs writes into Raft entries; its one sealing goroutine
	// stamps and enqueues, so the entries one leader appends carry
	// non-decreasing stamps.
	batch *batcher

	clock struct {
		sync.Mutex
		logClock
		// changed is closed, and replaced, whenever readiness changes.
		changed chan struct{}
	}

	stop      chan struct{}  // closed by Close once raft has shut down
	wg        sync.WaitGroup // the leadership watcher, the batcher and housekeeping
	closeOnce sync.Once
	closeErr  error
}

// Open starts a node on cfg.Dir. A Dir with Raft state resumes it, and
// cfg.Peers is ignored. A Dir without any first probes its peers over Raft
// (each dial and answer bounded by ProbeTimeout, all peers at once): unless
// one of them has moved past its bootstrap, it bootstraps with cfg.Peers, as
// every node of a new cluster does with the same list, which hashicorp/raft
// makes safe. A Dir that cannot be used as it is (raft.db locked or corrupt,
// snapshots missing, state lost, or an empty node whose peers already form a
// cluster without cfg.Replace) gives a *StateError whose message says what
// is wrong and what the operator can do. Open does not wait for a leader:
// see WaitLeader. ctx is checked before any work starts.
//
// The caller must Close the node. If Open fails, it has closed cfg.Listener.
func Open(ctx context.Context, cfg Config) (*Node, error) {
	n, err := open(ctx, cfg)
	if err != nil && cfg.Listener != nil {
		cfg.Listener.Close() // a second close, if the transport had taken it, is harmless
	}
	return n, err
}

func open(ctx context.Context, cfg Config) (_ *Node, err error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	n := &Node{
		cfg:       cfg,
		log:       cfg.Logger.With("node", cfg.ID),
		advertise: cfg.advertiseAddr(),
		fullLog:   ratelog.New(time.Second, 5),
		stop:      make(chan struct{}),
	}
	n.clock.changed = make(chan struct{})
	if cfg.Gossip == nil {
		n.sendLevel.Store(commandLevel)
	}
	if n.metrics, err = newNodeMetrics(cfg.Metrics, n); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			n.metrics.unregister(cfg.Metrics)
		}
	}()
	n.activity = newActivity(n.metrics)
	if cfg.noActivity {
		n.fsm = newMachineFSM(nil, n.metrics)
	} else {
		n.fsm = newMachineFSM(n.activity, n.metrics)
	}
	if cfg.Gossip != nil {
		n.mem = newMembership(n)
		n.routes = &peerRoutes{}
	}

	// Registered before the stores' closes, so it runs after them.
	made, err := lookMade(cfg.Dir)
	if err != nil {
		return nil, err
	}
	defer func() {
		if _, refused := errors.AsType[*StateError](err); refused {
			made.undo(n.log)
		}
	}()
	if err := os.MkdirAll(cfg.Dir, 0o750); err != nil {
		return nil, fmt.Errorf("create data dir: %w", err)
	}
	ln := cfg.Listener
	if ln == nil {
		if ln, err = net.Listen("tcp", cfg.RaftAddr); err != nil {
			return nil, fmt.Errorf("listen for raft: %w", err)
		}
	}
	hl := newHCLog(n.log, "raft")
	provider := n.addrProvider()              // nil: dial configured addresses
	trans := n.newTransport(ln, provider, hl) // sets n.stream and n.trans
	if cfg.wrapTransport != nil {
		trans = cfg.wrapTransport(trans)
	}
	defer func() {
		if err != nil {
			trans.Close() // closes ln
		}
	}()

	// The store, then everything else the directory holds, read before
	// raft starts, so that a directory raft cannot use stops the node with
	// an error saying what is wrong (DESIGN.md, "Storage and start-up").
	store, poisoned, err := openStore(cfg.Dir)
	if err != nil {
		return nil, err
	}
	n.store = store
	defer func() {
		if err != nil && !poisoned {
			n.store.Close()
		}
	}()
	if err := removeStaleSnapshots(cfg.Dir, n.log); err != nil {
		return nil, err
	}
	snaps, err := raft.NewFileSnapshotStoreWithLogger(cfg.Dir, snapshotsRetained, hl.Named("snapshot"))
	if err != nil {
		return nil, fmt.Errorf("open snapshot store: %w", err)
	}
	n.fsm.snapConfig = func() (raft.Configuration, uint64, bool) {
		list, err := snaps.List()
		if err != nil || len(list) == 0 {
			return raft.Configuration{}, 0, false
		}
		return list[0].Configuration, list[0].ConfigurationIndex, true
	}

	rc := n.raftConfig(hl)
	if err := raft.ValidateConfig(rc); err != nil {
		return nil, fmt.Errorf("raft config: %w", err)
	}
	wal, poisoned, err := openLog(cfg.Dir, n.store, hl.Named("wal"), n.log)
	if err != nil {
		return nil, err
	}
	if n.logs, err = newLogStore(wal, wal); err != nil {
		wal.Close()
		return nil, err
	}
	defer func() {
		if err != nil {
			n.logs.Close()
		}
	}()
	disk, err := readDiskState(cfg.Dir, n.store, n.logs, snaps)
	if p := (panicked{}); errors.As(err, &p) {
		poisoned = true
		path := filepath.Join(cfg.Dir, storeFile)
		return nil, &StateError{Kind: ErrCorruptState, Path: path,
			Problem: "is corrupt: bbolt cannot read it (" + p.Error() + ")", Remedy: remedyCorrupt(cfg.Dir)}
	}
	if err != nil {
		return nil, err
	}
	if err := n.recoverPeers(rc, snaps, trans, disk); err != nil {
		return nil, err
	}
	if err := checkRemoved(cfg.Dir); err != nil {
		return nil, err
	}
	existing := disk.hasState()
	fresh, err := n.prepareState(ctx, disk, rc, snaps, trans)
	if err == nil {
		// The node accepted its directory: from now on a missing WAL is a
		// lost log (openLog).
		err = markLogInWAL(n.store)
	}
	if err != nil {
		if n.mem != nil {
			n.mem.close()
		}
		return nil, err
	}
	if fresh {
		// A fresh node neither votes nor campaigns until the leader has
		// added it (membership) or, in a static cluster, until it holds
		// every entry committed before it came back.
		if n.mem != nil {
			gate := newVoteGate(trans, errVoteGated)
			n.mem.gate, trans = gate, gate
		} else {
			n.gate = newVoteGate(trans, errNotCaughtUp)
			trans = n.gate
		}
	}
	err = guard(func() error {
		var err error
		n.stable = &raftStable{StableStore: n.store}
		n.raft, err = raft.NewRaft(rc, n.fsm, n.logs, n.stable, snaps, trans)
		return err
	})
	if p := (panicked{}); errors.As(err, &p) {
		poisoned = true
		return nil, &StateError{Kind: ErrCorruptState, Path: cfg.Dir,
			Problem: "holds Raft state that raft cannot read (" + p.Error() + ")", Remedy: remedyCorrupt(cfg.Dir)}
	}
	if err != nil {
		// The config was validated above: what is left is the directory's
		// state (the term, the last entry, the snapshots: raft tries each,
		// newest first, and fails if none restores).
		return nil, &StateError{Kind: ErrCorruptState, Path: cfg.Dir,
			Problem: "holds Raft state that raft cannot load (" + err.Error() + ")", Remedy: remedyCorrupt(cfg.Dir)}
	}
	if n.mem != nil {
		if err := n.mem.start(ctx, fresh, !fresh || existing); err != nil {
			n.mem.close()
			n.raft.Shutdown().Error()
			return nil, err
		}
	}
	n.batch = newBatcher(n.submit, n.stop)
	n.batch.metrics = n.metrics
	written := func(commands int) {
		if n.raft.State() == raft.Leader {
			n.batch.stored(commands)
		}
	}
	n.logs.written.Store(&written)
	n.opened.Store(true)
	n.wg.Add(4)
	go n.housekeeping()
	go func() {
		defer n.wg.Done()
		n.activity.run(n.stop)
	}()
	go n.watchLeadership()
	go func() {
		defer n.wg.Done()
		n.batch.run()
	}()
	if n.gate != nil {
		n.wg.Add(1)
		go n.openVoteGateOnceCaughtUp(snaps)
	}
	n.log.Info("node open", "raft_addr", n.advertise, "dir", cfg.Dir, "resumed", existing)
	return n, nil
}

// raftConfig returns the Raft configuration for n's Config.
func (n *Node) raftConfig(logger hclog.Logger) *raft.Config {
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(n.cfg.ID)
	rc.HeartbeatTimeout = n.cfg.HeartbeatTimeout
	rc.ElectionTimeout = n.cfg.ElectionTimeout
	rc.LeaderLeaseTimeout = n.cfg.LeaderLeaseTimeout
	rc.CommitTimeout = n.cfg.CommitTimeout
	rc.SnapshotThreshold = n.cfg.SnapshotThreshold
	rc.TrailingLogs = n.cfg.TrailingLogs
	rc.SnapshotInterval = n.cfg.SnapshotInterval
	rc.Logger = logger
	return rc
}

// ID returns the node's id.
func (n *Node) ID() string { return n.cfg.ID }

// RaftAddr returns the Raft address the node advertises to its peers.
func (n *Node) RaftAddr() string { return n.advertise }

// IsLeader reports whether the node is the Raft leader now. A leader answers
// requests once it is also ready to stamp time, right after its first
// barrier.
func (n *Node) IsLeader() bool { return n.raft.State() == raft.Leader }

// Leader returns the id and Raft address of the leader this node knows of;
// both are empty while it knows none.
func (n *Node) Leader() (id, raftAddr string) {
	addr, lid := n.raft.LeaderWithID()
	return string(lid), string(addr)
}

// WaitLeader waits until this node knows a leader, and returns its id. It
// returns early with ctx's error, or an error if the node is closed.
func (n *Node) WaitLeader(ctx context.Context) (string, error) {
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		if id, _ := n.Leader(); id != "" {
			return id, nil
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			return "", fmt.Errorf("wait for a leader: %w", ctx.Err())
		case <-n.stop:
			return "", fmt.Errorf("wait for a leader: %w", errClosed)
		}
	}
}

// Close stops the node: if it is the leader it first hands leadership to a
// caught-up follower (bounded by ctx and ApplyTimeout), so the cluster does
// not wait out an election timeout; then it shuts Raft down, waits for the
// node's goroutines and closes the store. Requests still waiting return
// errors matching transport.ErrUnknownOutcome. Close is idempotent: later
// calls return the first call's result.
func (n *Node) Close(ctx context.Context) error {
	return n.close(ctx, true)
}

func (n *Node) close(ctx context.Context, transfer bool) error {
	n.closeOnce.Do(func() { n.closeErr = n.shutdown(ctx, transfer) })
	return n.closeErr
}

func (n *Node) shutdown(ctx context.Context, transfer bool) error {
	if transfer && n.IsLeader() && n.voters() > 1 {
		tctx, cancel := context.WithTimeout(ctx, n.cfg.ApplyTimeout)
		err := n.await(tctx, n.raft.LeadershipTransfer())
		cancel()
		if err != nil {
			n.log.Warn("leadership transfer before close failed; closing anyway", "err", err)
		} else {
			n.log.Info("handed leadership over before close")
		}
	}
	var errs []error
	if n.mem != nil {
		n.mem.close()
	}
	// Stop Raft, then cut its connections before waiting for it: an RPC
	// to a peer that does not answer fails at once instead of at its I/O
	// deadline (streamLayer).
	shut := n.raft.Shutdown()
	n.stream.closeConns()
	if err := shut.Error(); err != nil {
		errs = append(errs, fmt.Errorf("shut down raft: %w", err))
	}
	close(n.stop)
	n.wg.Wait()
	n.setClock(func(c *logClock) { c.stop() })
	if err := n.logs.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close raft log: %w", err))
	}
	if n.stable != nil {
		n.stable.closeWrites()
	}
	if err := n.store.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close raft store: %w", err))
	}
	n.log.Info("node closed")
	return errors.Join(errs...)
}

// voters counts the voters in the latest configuration.
func (n *Node) voters() int {
	f := n.raft.GetConfiguration()
	if f.Error() != nil {
		return 0
	}
	v := 0
	for _, s := range f.Configuration().Servers {
		if s.Suffrage == raft.Voter {
			v++
		}
	}
	return v
}

// isVoter reports whether this node is a voter in the latest
// configuration. raft keeps that configuration in an atomic value, so this
// reads local state only and never waits on raft's main loop.
func (n *Node) isVoter() bool {
	f := n.raft.GetConfiguration()
	if f.Error() != nil {
		return false
	}
	for _, s := range f.Configuration().Servers {
		if s.ID == raft.ServerID(n.cfg.ID) {
			return s.Suffrage == raft.Voter
		}
	}
	return false
}

// watchLeadership follows leadership changes: on gaining leadership it makes
// the clock ready once a barrier has applied every earlier entry; on losing
// it, it stops the clock. It runs until Close.
func (n *Node) watchLeadership() {
	defer n.wg.Done()
	for {
		select {
		case <-n.stop:
			return
		case leader := <-n.raft.LeaderCh():
			n.setClock(func(c *logClock) { c.stop() })
			if n.mem != nil {
				n.mem.leadership(leader)
			}
			if leader {
				n.prepareToStamp()
			}
		}
	}
}

// prepareToStamp runs the post-election Barrier, then starts the clock from
// the machine's log time (T_base) and the monotonic reading (M_base). Until
// then the new leader answers no request: it could not know the log time the
// previous leader reached.
func (n *Node) prepareToStamp() {
	for {
		if n.raft.State() != raft.Leader {
			return
		}
		err := n.await(context.Background(), n.raft.Barrier(n.cfg.ApplyTimeout))
		if err == nil {
			break
		}
		if !errors.Is(err, raft.ErrEnqueueTimeout) {
			n.log.Debug("leader barrier failed", "err", err)
			return
		}
	}
	term := n.raft.CurrentTerm()
	tBase := n.fsm.now()
	mBase := n.cfg.Monotonic()
	n.setClock(func(c *logClock) { c.start(term, tBase, mBase) })
	n.log.Info("leader ready", "term", term, "log_time_ns", tBase)
}

// setClock changes the clock under its lock and wakes every request waiting
// for readiness.
func (n *Node) setClock(fn func(c *logClock)) {
	n.clock.Lock()
	defer n.clock.Unlock()
	fn(&n.clock.logClock)
	close(n.clock.changed)
	n.clock.changed = make(chan struct{})
}

// readyLocked reports whether the clock may stamp: started, in the term Raft
// is in now, which this node still leads. n.clock must be held.
func (n *Node) readyLocked() bool {
	return n.clock.ready && n.clock.term == n.raft.CurrentTerm() && n.IsLeader()
}

// waitReady waits until the node is the leader and ready to stamp. It returns
// a *transport.NotLeaderError if the node is not the leader, ctx's error
// (wrapped) if ctx ends, and an error matching transport.ErrUnknownOutcome if
// the leader is not ready within ApplyTimeout (its barrier cannot commit).
// Nothing has been proposed in any of these cases.
func (n *Node) waitReady(ctx context.Context) error {
	var timeout <-chan time.Time
	for {
		n.clock.Lock()
		ready := n.readyLocked()
		changed := n.clock.changed
		n.clock.Unlock()
		if ready {
			return nil
		}
		if !n.IsLeader() {
			return n.notLeader()
		}
		if timeout == nil {
			t := time.NewTimer(n.cfg.ApplyTimeout)
			defer t.Stop()
			timeout = t.C
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return fmt.Errorf("wait for the new leader to be ready: %w", ctx.Err())
		case <-n.stop:
			return n.notLeader()
		case <-timeout:
			return fmt.Errorf("%w: leader not ready after %v (its barrier has not committed; no quorum?)",
				transport.ErrUnknownOutcome, n.cfg.ApplyTimeout)
		}
	}
}

// notLeader returns the error for a request this node cannot serve because it
// is not the leader, naming the leader it knows of.
func (n *Node) notLeader() error {
	if n.mem != nil && n.mem.removed.Load() {
		return n.mem.lastLeader()
	}
	id, addr := n.Leader()
	return &transport.NotLeaderError{LeaderID: id, LeaderRaftAddr: addr, LeaderClientAddr: n.mem.clientAddr(id)}
}

// await waits for f, for ctx to end or for the node to close. A future that
// hashicorp/raft never resolves (a committed entry queued to the FSM when it
// shuts down) therefore cannot hold a request, only the goroutine that waits
// on it.
func (n *Node) await(ctx context.Context, f raft.Future) error {
	done := make(chan error, 1)
	go func() { done <- f.Error() }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("stopped waiting for raft: %w", ctx.Err())
	case <-n.stop:
		return errClosed
	}
}

// propose hands c to the batcher, which packs it with other writes into one
// Raft entry stamped with log time, and waits until that entry is committed
// and applied, then returns c's own result. The error is
//
//   - a *transport.NotLeaderError when this node is not the leader: nothing
//     was appended, the request may go to the leader;
//   - ctx's error wrapped with transport.ErrUnknownOutcome if ctx ends after
//     the entry was handed to Raft (it may still commit), or just ctx's error
//     if it ends before (the command is withdrawn from the queue);
//   - an error matching transport.ErrUnknownOutcome when leadership is lost,
//     the node shuts down or Raft does not take the entry in time: the entry
//     may or may not apply. Retrying with the same (client id, seq) is safe:
//     the machine's dedup table returns the first result.
//
// Every command of an entry gets the entry's error; a caller that stops
// waiting affects no other command.
func (n *Node) propose(ctx context.Context, c fsm.Command) (fsm.Result, error) {
	res, _, err := n.proposeStamped(ctx, c)
	return res, err
}

// proposeStamped is propose that also returns, with a result, the monotonic
// reading (Config.Monotonic) at which this node stamped the entry that
// carried c: an Acquire's answer reports where in its round trip that was
// (AcquireResponse.queued_ns, answered_ns).
func (n *Node) proposeStamped(ctx context.Context, c fsm.Command) (fsm.Result, time.Duration, error) {
	r := newRequest(c)
	for {
		if err := n.waitReady(ctx); err != nil {
			return fsm.Result{}, 0, err
		}
		n.batch.enqueue(r)
		var o outcome
		select {
		case o = <-r.done:
		case <-ctx.Done():
			if o, ok := n.answered(r); ok {
				res, err := n.outcome(o, fmt.Errorf("stopped waiting for the batch: %w", ctx.Err()))
				return res, o.stamped, err
			}
			if n.batch.withdraw(r) {
				return fsm.Result{}, 0, fmt.Errorf("stopped waiting for the batch: %w", ctx.Err())
			}
			return fsm.Result{}, 0, fmt.Errorf("%w: stopped waiting for raft: %w", transport.ErrUnknownOutcome, ctx.Err())
		case <-n.stop:
			if o, ok := n.answered(r); ok {
				res, err := n.outcome(o, n.notLeader())
				return res, o.stamped, err
			}
			if n.batch.withdraw(r) {
				return fsm.Result{}, 0, n.notLeader()
			}
			return fsm.Result{}, 0, fmt.Errorf("%w: node closed while the command was in flight", transport.ErrUnknownOutcome)
		}
		if !errors.Is(o.err, errNotProposed) {
			res, err := n.outcome(o, nil)
			return res, o.stamped, err
		}
		// The leader was not ready when the batch was sealed: nothing was
		// proposed; wait for readiness again.
	}
}

// answered returns r's outcome if it has arrived.
func (n *Node) answered(r *request) (outcome, bool) {
	select {
	case o := <-r.done:
		return o, true
	default:
		return outcome{}, false
	}
}

// outcome maps a request's outcome to propose's result and error (see the
// table in DESIGN.md). notProposed is returned for errNotProposed.
func (n *Node) outcome(o outcome, notProposed error) (fsm.Result, error) {
	switch err := o.err; {
	case err == nil:
		return o.res, nil
	case errors.Is(err, errNotProposed):
		return fsm.Result{}, notProposed
	case errors.Is(err, raft.ErrNotLeader):
		return fsm.Result{}, n.notLeader()
	case errors.Is(err, errBadResponse):
		return fsm.Result{}, err
	default:
		return fsm.Result{}, fmt.Errorf("%w: %w", transport.ErrUnknownOutcome, err)
	}
}

// submit stamps cmds with log time and hands them to Raft as one entry. It
// proposes nothing, and returns false, unless the node is a ready leader.
// Only the batcher's goroutine calls it, so stamps are non-decreasing in the
// order entries reach Raft.
func (n *Node) submit(cmds []fsm.Command) (raft.ApplyFuture, time.Duration, bool) {
	n.clock.Lock()
	ready := n.readyLocked()
	var (
		now int64
		m   time.Duration
	)
	if ready {
		m = n.cfg.Monotonic()
		now = n.clock.stamp(m)
	}
	n.clock.Unlock()
	if !ready {
		return nil, 0, false
	}
	return n.raft.Apply(encodeEntry(now, cmds), n.cfg.ApplyTimeout), m, true
}

// verifyRead makes a read on this node linearizable: the node must be the
// leader, ready (so its machine holds every entry committed before its term,
// and it applied every entry it acknowledged since), and still the leader
// after the read began (raft.VerifyLeader contacts a quorum).
func (n *Node) verifyRead(ctx context.Context) error {
	if err := n.waitReady(ctx); err != nil {
		return err
	}
	err := n.await(ctx, n.raft.VerifyLeader())
	switch {
	case err == nil:
		return nil
	case errors.Is(err, raft.ErrNotLeader), errors.Is(err, raft.ErrLeadershipLost), errors.Is(err, errClosed):
		return n.notLeader()
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return err
	}
	return fmt.Errorf("%w: verify leadership: %w", transport.ErrUnknownOutcome, err)
}

// streamLayer is raft's StreamLayer over a TCP listener, advertising the
// configured address rather than the bound one. It keeps track of every
// connection it dialed or accepted, so that shutdown can close them all:
// hashicorp/raft closes its transport only after its goroutines have ended,
// and one waiting on a peer that does not answer (paused, or shutting down
// itself) would hold the shutdown for the RPC's whole I/O deadline; and it
// never closes the connections pooled for reuse, whose peers would keep a
// goroutine reading each of them. It is safe for concurrent use.
type streamLayer struct {
	net.Listener
	advertise net.Addr

	mu struct {
		sync.Mutex
		conns  map[*trackedConn]struct{}
		closed bool
	}
}

// Accept waits for a peer's connection.
func (s *streamLayer) Accept() (net.Conn, error) {
	c, err := s.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return s.track(c)
}

// track registers c, or closes it if the layer is closed.
func (s *streamLayer) track(c net.Conn) (net.Conn, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mu.closed {
		c.Close()
		return nil, errClosed
	}
	if s.mu.conns == nil {
		s.mu.conns = make(map[*trackedConn]struct{})
	}
	tc := &trackedConn{Conn: c, s: s}
	s.mu.conns[tc] = struct{}{}
	return tc, nil
}

// closeConns closes the listener and every connection, and makes Dial and
// Accept fail from now on.
func (s *streamLayer) closeConns() {
	s.mu.Lock()
	s.mu.closed = true
	conns := s.mu.conns
	s.mu.conns = nil
	s.mu.Unlock()
	s.Listener.Close()
	for c := range conns {
		c.Conn.Close()
	}
}

// trackedConn is a connection of a streamLayer; closing it forgets it.
type trackedConn struct {
	net.Conn
	s *streamLayer
}

func (c *trackedConn) Close() error {
	c.s.mu.Lock()
	delete(c.s.mu.conns, c)
	c.s.mu.Unlock()
	return c.Conn.Close()
}

// Addr returns the advertised address.
func (s *streamLayer) Addr() net.Addr { return s.advertise }

// dialAddrs is Config.DialAddrs as raft's ServerAddressProvider. A peer not
// in the map gets an error, on which raft dials its configured address (and
// logs a warning, so Open passes no provider at all when the map is empty).
type dialAddrs map[string]string

func (d dialAddrs) ServerAddr(id raft.ServerID) (raft.ServerAddress, error) {
	if a, ok := d[string(id)]; ok {
		return raft.ServerAddress(a), nil
	}
	return "", errNoDialAddr
}

var errNoDialAddr = errors.New("no dial address override")

// Dial connects to a peer.
func (s *streamLayer) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	d := net.Dialer{Timeout: timeout}
	c, err := d.Dial("tcp", string(addr))
	if err != nil {
		return nil, err
	}
	return s.track(c)
}

// tcpAddr is an advertised host:port, kept as written (a host name is not
// resolved, so it matches the peers' configuration).
type tcpAddr string

func (a tcpAddr) Network() string { return "tcp" }
func (a tcpAddr) String() string  { return string(a) }
