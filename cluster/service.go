package cluster

import (
	"context"
	"fmt"
	"math"
	"time"

	"github.com/hashicorp/raft"

	"github.com/leasehold/leasehold/fsm"
	"github.com/leasehold/leasehold/transport"
	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

var (
	_ transport.Service           = (*Node)(nil)
	_ transport.ListService       = (*Node)(nil)
	_ transport.BulkDeleteService = (*Node)(nil)
)

// The Service methods check each request with transport's Validate functions
// (as transport.Server does before calling them), so a direct caller cannot
// put a malformed command in the log; rules that need state are decided in
// Apply and come back as *transport.InvalidError with no field named.

// Acquire takes tokens, all or nothing, as a lease or a central decision. It
// replies only after the command is committed and applied. A denial is a
// response with Allowed false, not an error; errors are those of propose, plus
// transport.ErrNoLimit, transport.ErrStale, *transport.InvalidError and, for
// a new key or client_id at Config.MaxKeys or MaxSessions, a
// *transport.FullError (nothing proposed).
func (n *Node) Acquire(ctx context.Context, req *pb.AcquireRequest) (*pb.AcquireResponse, error) {
	if err := transport.ValidateAcquire(req); err != nil {
		return nil, err
	}
	arrived := n.cfg.Monotonic()
	items := req.GetItems()
	if err := n.admitState(ctx, req.GetClientId(), len(items), itemKeys(items)); err != nil {
		return nil, err
	}
	// A retry sent with its span after an earlier attempt was applied
	// without it gets that attempt's answer from fsm (a body that differs
	// only in its span is the same request).
	r, stamped, err := n.proposeStamped(ctx, acquireCommandAt(req, int(n.sendLevel.Load())))
	if err != nil {
		return nil, err
	}
	if err := resultError(r); err != nil {
		return nil, err
	}
	resp := acquireResponse(r)
	// Where in the round trip the entry that carried the request was
	// stamped. Both are measured on this node's monotonic clock, the one
	// that stamped it; a reading that went backwards (it must not)
	// reports nothing. The queue time is this attempt's, so it is sent
	// only when that entry decided the answer (r.Decided): a remembered
	// answer's log time was stamped earlier, by an entry this attempt may
	// postdate, while answered_ns still bounds it (that stamp is earlier
	// still).
	if answered := n.cfg.Monotonic(); stamped > 0 && arrived <= stamped && stamped <= answered {
		resp.AnsweredNs = int64(answered - stamped)
		if r.Decided {
			resp.QueuedNs = int64(stamped - arrived)
		}
	}
	return resp, nil
}

// Release gives back a lease's unused tokens. Released is false if the lease
// was unknown, expired or already released.
func (n *Node) Release(ctx context.Context, req *pb.ReleaseRequest) (*pb.ReleaseResponse, error) {
	if err := transport.ValidateRelease(req); err != nil {
		return nil, err
	}
	// It names no key. A client_id the machine keeps no session for holds
	// no live lease (a lease outlives its client's last command by at most
	// fsm.MaxLeaseTTL, a session by fsm.SessionTTL), so at the session cap
	// this refuses only a request that could free nothing.
	if err := n.admitState(ctx, req.GetClientId(), 0, nil); err != nil {
		return nil, err
	}
	r, err := n.propose(ctx, &fsm.Release{
		ClientID:   string(req.GetClientId()),
		Seq:        req.GetSeq(),
		AckedBelow: req.GetAckedBelow(),
		LeaseID:    req.GetLeaseId(),
		Unused:     req.GetUnused(),
	})
	if err != nil {
		return nil, err
	}
	if err := resultError(r); err != nil {
		return nil, err
	}
	return &pb.ReleaseResponse{Released: r.Status == fsm.StatusOK, LogTimeNs: r.Time}, nil
}

// SetLimit defines a key's limit; it is kept until DeleteLimit.
func (n *Node) SetLimit(ctx context.Context, req *pb.SetLimitRequest) (*pb.SetLimitResponse, error) {
	if err := transport.ValidateSetLimit(req); err != nil {
		return nil, err
	}
	r, err := n.propose(ctx, &fsm.SetLimit{Key: req.GetKey(), Limit: LimitFromPB(req.GetLimit())})
	if err != nil {
		return nil, err
	}
	if err := resultError(r); err != nil {
		return nil, err
	}
	return &pb.SetLimitResponse{LogTimeNs: r.Time}, nil
}

// DeleteLimit forgets a key's limit and state.
func (n *Node) DeleteLimit(ctx context.Context, req *pb.DeleteLimitRequest) (*pb.DeleteLimitResponse, error) {
	if err := transport.ValidateDeleteLimit(req); err != nil {
		return nil, err
	}
	r, err := n.propose(ctx, &fsm.DeleteLimit{Key: req.GetKey()})
	if err != nil {
		return nil, err
	}
	if err := resultError(r); err != nil {
		return nil, err
	}
	return &pb.DeleteLimitResponse{LogTimeNs: r.Time, Found: &r.Found}, nil
}

// DeleteLimits deletes, in one entry, the keys of a prefix after a cursor,
// at most fsm.MaxDeleteExamined examined (see fsm.DeleteLimits). A leader
// whose cluster has a server that predates the command refuses it with an
// error that Is transport.ErrUpgradeNeeded, naming the servers; nothing is
// proposed. Not capped: it only removes keys.
func (n *Node) DeleteLimits(ctx context.Context, req *pb.DeleteLimitsRequest) (*pb.DeleteLimitsResponse, error) {
	if err := transport.ValidateDeleteLimits(req); err != nil {
		return nil, err
	}
	if !n.IsLeader() {
		return nil, n.notLeader()
	}
	if err := n.requireLevel(levelDeleteLimits, "deleting keys by prefix"); err != nil {
		return nil, err
	}
	r, err := n.propose(ctx, &fsm.DeleteLimits{Prefix: req.GetPrefix(), StartAfter: req.GetStartAfter(),
		UnpinnedOnly: req.GetUnpinnedOnly()})
	if err != nil {
		return nil, err
	}
	if err := resultError(r); err != nil {
		return nil, err
	}
	d := r.Deleted
	return &pb.DeleteLimitsResponse{Deleted: int64(d.Keys), LastKey: d.LastKey, More: d.More, LogTimeNs: r.Time}, nil
}

// GetLimit returns a key's limit as the leader has it. It is served only by
// the leader, and is linearizable: it reflects every write acknowledged before
// it began. A follower returns a *transport.NotLeaderError.
func (n *Node) GetLimit(ctx context.Context, req *pb.GetLimitRequest) (*pb.GetLimitResponse, error) {
	if err := transport.ValidateGetLimit(req); err != nil {
		return nil, err
	}
	if err := n.verifyRead(ctx); err != nil {
		return nil, err
	}
	var (
		l           fsm.Limit
		pinned, has bool
	)
	n.fsm.read(func(m *fsm.Machine) { l, pinned, has = m.Lookup(req.GetKey()) })
	if !has {
		return &pb.GetLimitResponse{}, nil
	}
	return &pb.GetLimitResponse{Found: true, Limit: limitToPB(l), Pinned: pinned}, nil
}

// Status describes this node and its view of the cluster from local state; any
// node answers it, and nothing is verified with the other nodes.
func (n *Node) Status(ctx context.Context, _ *pb.StatusRequest) (*pb.StatusResponse, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	leaderID, leaderAddr := n.Leader()
	resp := &pb.StatusResponse{
		NodeId:           n.cfg.ID,
		RaftAddr:         n.advertise,
		NodeState:        n.nodeState(),
		ClientAddr:       n.mem.clientAddr(n.cfg.ID),
		LeaderClientAddr: n.mem.clientAddr(leaderID),
		LeaderId:         leaderID,
		LeaderRaftAddr:   leaderAddr,
		Term:             n.raft.CurrentTerm(),
		AppliedIndex:     n.raft.AppliedIndex(),
		CommitIndex:      n.raft.CommitIndex(),
		MaxKeys:          int64(n.cfg.MaxKeys),
		MaxSessions:      int64(n.cfg.MaxSessions),
	}
	n.fsm.read(func(m *fsm.Machine) {
		st := m.Stats()
		resp.LogTimeNs = m.Now()
		resp.Keys, resp.Leases, resp.Sessions = int64(st.Keys), int64(st.Leases), int64(st.Sessions)
	})
	f := n.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return nil, fmt.Errorf("read raft configuration: %w", err)
	}
	for _, s := range f.Configuration().Servers {
		resp.Servers = append(resp.Servers, &pb.Server{
			Id:       string(s.ID),
			RaftAddr: string(s.Address),
			Voter:    s.Suffrage == raft.Voter,
		})
	}
	return resp, nil
}

// Charge debits tokens already used from token-bucket keys, into debt down to
// each key's MaxDebt, and reports per key what it charged and forgave. It
// replies after the command is committed and applied; a retry with the same
// client_id and seq gets the first answer and charges nothing again. Errors
// are those of propose, plus transport.ErrNoLimit, transport.ErrStale,
// *transport.InvalidError (a key that is not a token bucket, a reused seq)
// and *transport.FullError, as for Acquire.
func (n *Node) Charge(ctx context.Context, req *pb.ChargeRequest) (*pb.ChargeResponse, error) {
	if err := transport.ValidateCharge(req); err != nil {
		return nil, err
	}
	items := req.GetItems()
	if err := n.admitState(ctx, req.GetClientId(), len(items), itemKeys(items)); err != nil {
		return nil, err
	}
	r, err := n.propose(ctx, chargeCommand(req))
	if err != nil {
		return nil, err
	}
	if err := resultError(r); err != nil {
		return nil, err
	}
	resp := &pb.ChargeResponse{Items: make([]*pb.ChargeItemResult, len(r.Items)), RetryAfterNs: retryAfterNs(r.RetryAfter),
		LogTimeNs: r.Time}
	for i, it := range r.Items {
		// Granted is what was charged; the rest of the item's tokens was
		// forgiven. A retry has the same tokens (the dedup table checks the
		// body), so its answer is the same. (Only a result remembered from
		// a v1 snapshot, which answers any body, could have other items.)
		var tokens int64
		if i < len(req.GetItems()) {
			tokens = req.GetItems()[i].GetTokens()
		}
		resp.Items[i] = &pb.ChargeItemResult{Charged: it.Granted, Forgiven: max(tokens-it.Granted, 0), Remaining: it.Remaining}
	}
	return resp, nil
}

// Extend keeps a live lease alive longer. Extended is false if the lease was
// unknown, expired or released. Errors are those of Release.
func (n *Node) Extend(ctx context.Context, req *pb.ExtendRequest) (*pb.ExtendResponse, error) {
	if err := transport.ValidateExtend(req); err != nil {
		return nil, err
	}
	// It names no key. A client_id the machine keeps no session for holds
	// no live lease (a lease outlives its client's last command by at most
	// fsm.MaxLeaseTTL, a session by fsm.SessionTTL), so at the session cap
	// this refuses only a request that could free nothing.
	if err := n.admitState(ctx, req.GetClientId(), 0, nil); err != nil {
		return nil, err
	}
	r, err := n.propose(ctx, &fsm.Extend{
		ClientID:   string(req.GetClientId()),
		Seq:        req.GetSeq(),
		AckedBelow: req.GetAckedBelow(),
		LeaseID:    req.GetLeaseId(),
		TTL:        time.Duration(req.GetTtlNs()),
	})
	if err != nil {
		return nil, err
	}
	if err := resultError(r); err != nil {
		return nil, err
	}
	return &pb.ExtendResponse{Extended: r.Status == fsm.StatusOK, TtlNs: int64(r.TTL), LogTimeNs: r.Time}, nil
}

// Restrict blocks token-bucket keys, lowers them, or both, and reports per
// key what it took away. Errors are those of Charge.
func (n *Node) Restrict(ctx context.Context, req *pb.RestrictRequest) (*pb.RestrictResponse, error) {
	if err := transport.ValidateRestrict(req); err != nil {
		return nil, err
	}
	items := req.GetItems()
	if err := n.admitState(ctx, req.GetClientId(), len(items), itemKeys(items)); err != nil {
		return nil, err
	}
	r, err := n.propose(ctx, restrictCommand(req))
	if err != nil {
		return nil, err
	}
	if err := resultError(r); err != nil {
		return nil, err
	}
	resp := &pb.RestrictResponse{Items: make([]*pb.RestrictItemResult, len(r.Items)), RetryAfterNs: retryAfterNs(r.RetryAfter),
		LogTimeNs: r.Time}
	for i, it := range r.Items {
		resp.Items[i] = &pb.RestrictItemResult{Remaining: it.Remaining, Lowered: it.Granted}
	}
	return resp, nil
}

// chargeCommand converts a ChargeRequest to an fsm.Charge.
func chargeCommand(req *pb.ChargeRequest) *fsm.Charge {
	items := make([]fsm.ChargeItem, len(req.GetItems()))
	for i, it := range req.GetItems() {
		items[i] = fsm.ChargeItem{Key: it.GetKey(), Tokens: it.GetTokens()}
		if it.GetLimit() != nil {
			l := LimitFromPB(it.GetLimit())
			items[i].Limit = &l
		}
	}
	return &fsm.Charge{ClientID: string(req.GetClientId()), Seq: req.GetSeq(), AckedBelow: req.GetAckedBelow(), Items: items}
}

// restrictCommand converts a RestrictRequest to an fsm.Restrict; an absent
// remaining is fsm.NoRemaining.
func restrictCommand(req *pb.RestrictRequest) *fsm.Restrict {
	items := make([]fsm.RestrictItem, len(req.GetItems()))
	for i, it := range req.GetItems() {
		items[i] = fsm.RestrictItem{Key: it.GetKey(), Remaining: fsm.NoRemaining, BlockFor: time.Duration(it.GetBlockedForNs())}
		if it.Remaining != nil {
			items[i].Remaining = it.GetRemaining()
		}
		if it.GetLimit() != nil {
			l := LimitFromPB(it.GetLimit())
			items[i].Limit = &l
		}
	}
	return &fsm.Restrict{ClientID: string(req.GetClientId()), Seq: req.GetSeq(), AckedBelow: req.GetAckedBelow(), Items: items}
}

// retryAfterNs converts a result's RetryAfter to the wire: limiter.Never
// (never) is -1.
func retryAfterNs(d time.Duration) int64 {
	if d == neverRetry {
		return -1
	}
	return int64(d)
}

// resultError maps a result status that is an error to the transport error;
// OK, Denied and LeaseGone are answers, not errors. A seq reused for another
// request names the seq field; other rules of Apply name none.
func resultError(r fsm.Result) error {
	switch {
	case r.Status == fsm.StatusOK, r.Status == fsm.StatusDenied, r.Status == fsm.StatusLeaseGone:
		return nil
	case r.Status == fsm.StatusNoLimit:
		return &transport.NoLimitError{Key: r.NoLimitKey, Reason: r.Message}
	case r.Status == fsm.StatusStale:
		return fmt.Errorf("%w: %s", transport.ErrStale, r.Message)
	case r.Status == fsm.StatusSeqReused:
		return &transport.InvalidError{Field: "seq", Reason: r.Message}
	case r.Status.Invalid():
		return &transport.InvalidError{Reason: r.Message}
	}
	return fmt.Errorf("unexpected result status %v: %s", r.Status, r.Message)
}

// acquireCommand converts an AcquireRequest to an fsm.Acquire.
func acquireCommand(req *pb.AcquireRequest) *fsm.Acquire {
	items := make([]fsm.Item, len(req.GetItems()))
	for i, it := range req.GetItems() {
		items[i] = fsm.Item{Key: it.GetKey(), Count: it.GetCount(), Want: it.GetWant()}
		if it.GetLimit() != nil {
			l := LimitFromPB(it.GetLimit())
			items[i].Limit = &l
		}
	}
	return &fsm.Acquire{
		ClientID:   string(req.GetClientId()),
		Seq:        req.GetSeq(),
		AckedBelow: req.GetAckedBelow(),
		Items:      items,
		TTL:        time.Duration(req.GetTtlNs()),
		Paced:      req.GetPaced(),
		PacedAfter: req.GetPacedAfterNs(),
		Span:       time.Duration(req.GetSpanNs()),
	}
}

// neverRetry is limiter.Never, the RetryAfter of a denial that can never
// succeed; on the wire it is -1.
const neverRetry = time.Duration(math.MaxInt64)

// acquireResponse converts an Acquire's OK or Denied result.
func acquireResponse(r fsm.Result) *pb.AcquireResponse {
	resp := &pb.AcquireResponse{
		Allowed:   r.Status == fsm.StatusOK,
		LeaseId:   r.LeaseID,
		TtlNs:     int64(r.TTL),
		LogTimeNs: r.Time,
		Items:     make([]*pb.ItemGrant, len(r.Items)),
		Lessees:   r.Lessees,
		PieceNs:   int64(r.Piece),
		Pieces:    r.Pieces,
		Decided:   r.Decided,
	}
	// A denial's retry-after, or a short lease's pace.
	resp.RetryAfterNs = retryAfterNs(r.RetryAfter)
	for i, it := range r.Items {
		resp.Items[i] = &pb.ItemGrant{Granted: it.Granted, Remaining: it.Remaining}
	}
	return resp
}

// LimitFromPB converts a limit definition from the wire. The algorithm values
// are the same on both sides. A sliding window is counted in
// fsm.WindowBuckets of its window and slots, the wire having no such field:
// every window defined through the API counts finer than its slots.
func LimitFromPB(l *pb.Limit) fsm.Limit {
	lim := fsm.Limit{
		Algorithm: fsm.Algorithm(l.GetAlgorithm()),
		Limit:     l.GetLimit(),
		Period:    time.Duration(l.GetPeriodNs()),
		Burst:     l.GetBurst(),
		Slots:     l.GetSlots(),
		Strict:    l.GetStrict(),
		MaxLease:  time.Duration(l.GetMaxLeaseNs()),
		MaxDebt:   l.GetMaxDebt(),
	}
	if lim.Algorithm == fsm.SlidingWindow {
		lim.Buckets = fsm.WindowBuckets(lim.Period, lim.Slots)
	}
	return lim
}

// limitToPB converts a limit definition to the wire.
func limitToPB(l fsm.Limit) *pb.Limit {
	return &pb.Limit{
		Algorithm:  pb.Algorithm(l.Algorithm),
		Limit:      l.Limit,
		PeriodNs:   int64(l.Period),
		Burst:      l.Burst,
		Slots:      l.Slots,
		Strict:     l.Strict,
		MaxLeaseNs: int64(l.MaxLease),
		MaxDebt:    l.MaxDebt,
	}
}

// ListLimits returns a page of the keys the leader holds and their limits,
// in byte order. It is served only by the leader, and is linearizable as
// GetLimit is. A page holds the state machine for one pass over every key
// (fsm's Machine.List), as a snapshot capture does.
func (n *Node) ListLimits(ctx context.Context, req *pb.ListLimitsRequest) (*pb.ListLimitsResponse, error) {
	if err := transport.ValidateListLimits(req); err != nil {
		return nil, err
	}
	if err := n.verifyRead(ctx); err != nil {
		return nil, err
	}
	size := int(req.GetPageSize())
	if size == 0 {
		size = transport.DefaultListPage
	}
	var (
		keys []fsm.ListedKey
		more bool
	)
	n.fsm.read(func(m *fsm.Machine) {
		keys, more = m.List(req.GetPrefix(), req.GetStartAfter(), size, req.GetPinnedOnly())
	})
	resp := &pb.ListLimitsResponse{Limits: make([]*pb.ListedLimit, len(keys)), More: more}
	for i, k := range keys {
		resp.Limits[i] = &pb.ListedLimit{Key: k.Key, Limit: limitToPB(k.Limit), Pinned: k.Pinned}
	}
	return resp, nil
}
