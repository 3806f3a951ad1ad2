package client_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/proto"

	"github.com/leasehold/leasehold/client"
	"github.com/leasehold/leasehold/limiter"
	"github.com/leasehold/leasehold/transport"
	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

// fakeCluster is an in-memory Leasehold cluster for tests: token buckets with
// leases, fair shares and a dedup table, served by one gRPC server per node
// over bufconn, through transport.Register (so requests are validated and
// errors mapped exactly as a real node does). Only the leader applies; other
// nodes answer NotLeader. Time is time.Now, the fake clock inside a synctest
// bubble. Sliding windows are modelled as token buckets.
type fakeCluster struct {
	tb    testing.TB
	start time.Time
	nodes []*fakeNode

	mu struct {
		sync.Mutex
		leader    int // index into nodes; -1: none
		keys      map[string]*fakeKey
		leases    map[uint64]*fakeLease
		nextLease uint64
		results   map[string]*fakeResult // by client_id + seq
		acquires  []acquireRecord        // every Acquire a leader received
		releases  []*pb.ReleaseRequest   // every Release a leader applied
		charges   []*pb.ChargeRequest    // every Charge a leader applied (not its retries)
		extends   []*pb.ExtendRequest    // every Extend a leader applied
		restricts []*pb.RestrictRequest  // every Restrict a leader applied
		retries   []uint64               // seqs answered from the dedup table

		down       bool          // every node answers UNAVAILABLE
		statusDown bool          // Status fails on every node
		delay      time.Duration // an Acquire applies this long after it arrives
		replyDelay time.Duration // and is answered this long after it applies
		// reportHeld: answers report delay and replyDelay as the time the
		// node held the request before and after its stamp (queued_ns,
		// answered_ns), as a leader does.
		reportHeld bool
		// oldNode: answers say nothing of whether they were decided
		// (AcquireResponse.decided), and a remembered answer keeps the
		// queue time of the attempt it first answered, as nodes did
		// before the field.
		oldNode bool
		// spanlessBuckets: a token bucket's central answer says nothing
		// of the time it may be spent in, as a cluster below the command
		// level of fsm's Acquire.SpanBuckets answers.
		spanlessBuckets bool
		failApplied     int           // so many Acquires apply, then answer UNAVAILABLE
		hold            chan struct{} // Acquires wait for this to close
		blocked         int           // Acquires waiting on hold
		noLease         bool          // grant central decisions (ttl 0) only
		noLimit         bool          // answer ErrNoLimit
		refuse          error         // answer it, a refusal (ErrPermissionDenied, say)
		releaseDelay    time.Duration // a Release is applied after this long
		full            bool          // answer a *transport.FullError (new keys at the cap)
		denyUntil       time.Time     // deny every Acquire until then
		loseCharges     int           // so many Charges (applied or retried) answer UNAVAILABLE
		// ledger counts, per token-bucket key, what acquires granted,
		// releases gave back and charges charged.
		ledger     map[string]*fakeLedger
		paused     int           // node index+1 that never answers (a SIGSTOPped process); 0: none
		pace       time.Duration // every lease carries this pace (retry_after_ns on a grant)
		leaderAddr bool          // NotLeader names the leader's client address, as gossip lets a node
		lessees    int32         // report this many lessees on every key; 0: count them
		// piece, if set, pieces the leases of paced acquires of sliding
		// windows into buckets of this width (log time from the fake's
		// start), as fsm does: at least two buckets, the last ending its
		// life's, none before paced_after_ns. Single-item acquires only.
		piece time.Duration
		// lag holds log time back by so much (now); lastNow is the last
		// log time read.
		lag     time.Duration
		lastNow int64
	}
}

type fakeKey struct {
	conc     bool // a concurrency limit: held counts units of live leases
	limit    int64
	bucket   limiter.TokenBucket
	state    limiter.BucketState
	held     int64
	maxLease time.Duration
	maxDebt  int64
	floor    int64 // a Restrict's TAT: no refund goes below it
}

type fakeLedger struct{ granted, returned, charged int64 }

// ledgerLocked returns key's ledger.
func (f *fakeCluster) ledgerLocked(key string) *fakeLedger {
	if f.mu.ledger == nil {
		f.mu.ledger = make(map[string]*fakeLedger)
	}
	l, ok := f.mu.ledger[key]
	if !ok {
		l = &fakeLedger{}
		f.mu.ledger[key] = l
	}
	return l
}

// net returns the tokens key has given clients for good: granted, less
// given back, plus charged.
func (f *fakeCluster) net(key string) int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	l := f.ledgerLocked(key)
	return l.granted - l.returned + l.charged
}

type fakeLease struct {
	key     string // the first item's key
	client  string
	granted int64 // the first item's grant
	items   []fakeItem
	expires int64 // fake log time
}

type fakeItem struct {
	key     string
	granted int64
}

type fakeResult struct {
	req  proto.Message
	resp proto.Message
}

type acquireRecord struct {
	node int
	at   time.Duration // since the fake started
	req  *pb.AcquireRequest
}

type fakeNode struct {
	c   *fakeCluster
	idx int
	id  string
	lis *bufconn.Listener
	srv *grpc.Server
}

// newFake starts a cluster of n nodes, node 0 leading. It stops when the test
// ends.
func newFake(tb testing.TB, n int) *fakeCluster {
	f := startFake(n)
	f.tb = tb
	tb.Cleanup(f.stop)
	return f
}

// startFake starts a cluster of n nodes, node 0 leading; stop stops it.
func startFake(n int) *fakeCluster {
	f := &fakeCluster{start: time.Now()}
	f.mu.keys = make(map[string]*fakeKey)
	f.mu.leases = make(map[uint64]*fakeLease)
	f.mu.results = make(map[string]*fakeResult)
	f.mu.nextLease = 1
	for i := range n {
		nd := &fakeNode{c: f, idx: i, id: fmt.Sprintf("n%d", i+1), lis: bufconn.Listen(1 << 16), srv: grpc.NewServer()}
		transport.Register(nd.srv, nd)
		go nd.srv.Serve(nd.lis)
		f.nodes = append(f.nodes, nd)
	}
	return f
}

func (f *fakeCluster) stop() {
	for _, nd := range f.nodes {
		nd.srv.Stop()
		nd.lis.Close()
	}
}

// addrs returns the nodes' endpoints, as a user would list them.
func (f *fakeCluster) addrs() []string {
	var out []string
	for i := range f.nodes {
		out = append(out, fmt.Sprintf("127.0.0.1:%d", 7101+i))
	}
	return out
}

// dialer routes the addresses of addrs to the nodes' bufconn listeners.
func (f *fakeCluster) dialer() grpc.DialOption {
	return grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
		for i, a := range f.addrs() {
			if a == addr {
				return f.nodes[i].lis.DialContext(ctx)
			}
		}
		return nil, fmt.Errorf("fake: no node at %s", addr)
	})
}

// dial returns a Client of f, closed when the test ends.
func (f *fakeCluster) dial(tb testing.TB, opts ...client.Option) *client.Client {
	tb.Helper()
	opts = append([]client.Option{
		client.WithInsecure(),
		client.WithDialOptions(f.dialer()),
		client.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))),
	}, opts...)
	c, err := client.Dial(tb.Context(), f.addrs(), opts...)
	if err != nil {
		tb.Fatalf("Dial: %v", err)
	}
	tb.Cleanup(func() { c.Close() })
	return c
}

// dialDirect returns a Client of f that calls the nodes in-process, through
// transport's server adapter (validation and error mapping as over gRPC),
// without gRPC: for tests that make many requests.
func (f *fakeCluster) dialDirect(tb testing.TB, opts ...client.Option) *client.Client {
	tb.Helper()
	api := func(endpoint string) pb.LeaseholdClient {
		for i, a := range f.addrs() {
			if a == endpoint {
				return directAPI{transport.NewServer(f.nodes[i])}
			}
		}
		tb.Fatalf("fake: no node at %s", endpoint)
		return nil
	}
	return f.dial(tb, append([]client.Option{client.WithAPIForTest(api)}, opts...)...)
}

// directAPI calls a server in-process.
type directAPI struct{ s *transport.Server }

func (d directAPI) Acquire(ctx context.Context, in *pb.AcquireRequest, _ ...grpc.CallOption) (*pb.AcquireResponse, error) {
	return d.s.Acquire(ctx, in)
}

func (d directAPI) Release(ctx context.Context, in *pb.ReleaseRequest, _ ...grpc.CallOption) (*pb.ReleaseResponse, error) {
	return d.s.Release(ctx, in)
}

func (d directAPI) SetLimit(ctx context.Context, in *pb.SetLimitRequest, _ ...grpc.CallOption) (*pb.SetLimitResponse, error) {
	return d.s.SetLimit(ctx, in)
}

func (d directAPI) GetLimit(ctx context.Context, in *pb.GetLimitRequest, _ ...grpc.CallOption) (*pb.GetLimitResponse, error) {
	return d.s.GetLimit(ctx, in)
}

func (d directAPI) DeleteLimit(ctx context.Context, in *pb.DeleteLimitRequest, _ ...grpc.CallOption) (*pb.DeleteLimitResponse, error) {
	return d.s.DeleteLimit(ctx, in)
}

func (d directAPI) Status(ctx context.Context, in *pb.StatusRequest, _ ...grpc.CallOption) (*pb.StatusResponse, error) {
	return d.s.Status(ctx, in)
}

func (d directAPI) Charge(ctx context.Context, in *pb.ChargeRequest, _ ...grpc.CallOption) (*pb.ChargeResponse, error) {
	return d.s.Charge(ctx, in)
}

func (d directAPI) Extend(ctx context.Context, in *pb.ExtendRequest, _ ...grpc.CallOption) (*pb.ExtendResponse, error) {
	return d.s.Extend(ctx, in)
}

func (d directAPI) Restrict(ctx context.Context, in *pb.RestrictRequest, _ ...grpc.CallOption) (*pb.RestrictResponse, error) {
	return d.s.Restrict(ctx, in)
}

func (d directAPI) Members(ctx context.Context, in *pb.MembersRequest, _ ...grpc.CallOption) (*pb.MembersResponse, error) {
	return d.s.Members(ctx, in)
}

func (d directAPI) ListLimits(ctx context.Context, in *pb.ListLimitsRequest, _ ...grpc.CallOption) (*pb.ListLimitsResponse, error) {
	return d.s.ListLimits(ctx, in)
}

func (d directAPI) DeleteLimits(ctx context.Context, in *pb.DeleteLimitsRequest, _ ...grpc.CallOption) (*pb.DeleteLimitsResponse, error) {
	return d.s.DeleteLimits(ctx, in)
}

func (d directAPI) RemoveMember(ctx context.Context, in *pb.RemoveMemberRequest, _ ...grpc.CallOption) (*pb.RemoveMemberResponse, error) {
	return d.s.RemoveMember(ctx, in)
}

// now returns the fake's log time: time since its start, less mu.lag, never
// going back (a lag set later stalls it, as an election stalls the log).
func (f *fakeCluster) now() int64 {
	t := max(f.mu.lastNow, int64(time.Since(f.start))-int64(f.mu.lag))
	f.mu.lastNow = t
	return t
}

// set runs fn with the cluster locked, to change its behaviour.
func (f *fakeCluster) set(fn func(f *fakeCluster)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

// holdAcquires makes every Acquire wait, once it arrives, until release is
// called (f.blocked counts those waiting).
func (f *fakeCluster) holdAcquires() (release func()) {
	hold := make(chan struct{})
	f.set(func(f *fakeCluster) { f.mu.hold = hold })
	return func() { f.set(func(f *fakeCluster) { close(f.mu.hold); f.mu.hold = nil }) }
}

// election runs an election in the background: from after (fake time),
// no node leads until length after the first Acquire that found no
// leader; then node 1 does. It returns a channel closed once the election
// is over.
func (f *fakeCluster) election(after, length time.Duration) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		time.Sleep(after)
		f.set(func(f *fakeCluster) { f.mu.leader = -1 })
		for n := len(f.acquires()); len(f.acquires()) == n; {
			time.Sleep(time.Millisecond)
		}
		time.Sleep(length)
		f.set(func(f *fakeCluster) { f.mu.leader = 1 })
	}()
	return done
}

func (f *fakeCluster) acquires() []acquireRecord {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]acquireRecord(nil), f.mu.acquires...)
}

func (f *fakeCluster) releases() []*pb.ReleaseRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]*pb.ReleaseRequest(nil), f.mu.releases...)
}

func (f *fakeCluster) charges() []*pb.ChargeRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]*pb.ChargeRequest(nil), f.mu.charges...)
}

func (f *fakeCluster) extends() []*pb.ExtendRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]*pb.ExtendRequest(nil), f.mu.extends...)
}

func (f *fakeCluster) restricts() []*pb.RestrictRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]*pb.RestrictRequest(nil), f.mu.restricts...)
}

// level returns a token-bucket key's signed level now (negative: in debt or
// blocked), or a concurrency key's units held; 0 for a key it does not
// have.
func (f *fakeCluster) level(key string) int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	now := f.now()
	f.expireLocked(now)
	k, ok := f.mu.keys[key]
	switch {
	case !ok:
		return 0
	case k.conc:
		return k.held
	}
	return k.bucket.Level(k.state, now)
}

func (f *fakeCluster) blocked() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.mu.blocked
}

// grant is what one Acquire the leader applied granted: n tokens, on a
// lease or as a central decision.
type grant struct {
	n     int64
	lease bool
}

// grants returns what every Acquire the leader applied granted.
func (f *fakeCluster) grants() []grant {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []grant
	for _, r := range f.mu.results {
		if resp, ok := r.resp.(*pb.AcquireResponse); ok && resp.GetAllowed() {
			out = append(out, grant{resp.GetItems()[0].GetGranted(), resp.GetLeaseId() != 0})
		}
	}
	return out
}

// granted returns the tokens granted by every Acquire the leader applied.
func (f *fakeCluster) granted() []int64 {
	var out []int64
	for _, g := range f.grants() {
		out = append(out, g.n)
	}
	return out
}

func (nd *fakeNode) Acquire(ctx context.Context, req *pb.AcquireRequest) (*pb.AcquireResponse, error) {
	f := nd.c
	f.mu.Lock()
	if f.mu.paused == nd.idx+1 {
		f.mu.Unlock()
		<-ctx.Done() // a stopped process answers nothing
		return nil, ctx.Err()
	}
	defer f.mu.Unlock()
	f.mu.acquires = append(f.mu.acquires, acquireRecord{node: nd.idx, at: time.Since(f.start), req: proto.Clone(req).(*pb.AcquireRequest)})
	if err := nd.serving(); err != nil {
		return nil, err
	}
	rk := resultKey(req.GetClientId(), req.GetSeq())
	if r, ok := f.mu.results[rk]; ok {
		return f.retried(r, req)
	}
	if f.mu.hold != nil {
		hold := f.mu.hold
		f.mu.blocked++
		f.mu.Unlock()
		select {
		case <-hold:
		case <-ctx.Done():
		}
		f.mu.Lock()
		f.mu.blocked--
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
	}
	if d := f.mu.delay; d > 0 {
		f.mu.Unlock()
		time.Sleep(d)
		f.mu.Lock()
	}
	if f.mu.noLimit {
		return nil, transport.ErrNoLimit
	}
	if f.mu.refuse != nil {
		return nil, f.mu.refuse
	}
	if f.mu.full {
		return nil, &transport.FullError{Resource: transport.FullKeys,
			Reason: fmt.Sprintf("the cluster holds 2000000 keys, at its cap (--max-keys 2000000); key %q is new. Keys the "+
				"cluster holds are served; ...", req.GetItems()[0].GetKey())}
	}
	resp, err := f.applyAcquire(req)
	if err != nil {
		return nil, err
	}
	if f.mu.reportHeld {
		resp.QueuedNs, resp.AnsweredNs = int64(f.mu.delay), int64(f.mu.replyDelay)
		resp.Decided = !f.mu.oldNode
	}
	f.mu.results[rk] = &fakeResult{req: proto.Clone(req), resp: resp}
	if d := f.mu.replyDelay; d > 0 {
		f.mu.Unlock()
		time.Sleep(d)
		f.mu.Lock()
	}
	return f.answer(resp)
}

func resultKey(client []byte, seq uint64) string { return fmt.Sprintf("%x/%d", client, seq) }

// retried answers a request whose seq has a result: it must be the very
// same request (acked_below aside), and gets the first answer.
func (f *fakeCluster) retried(r *fakeResult, req *pb.AcquireRequest) (*pb.AcquireResponse, error) {
	if !proto.Equal(stripAck(r.req), stripAck(req)) && f.tb != nil {
		f.tb.Errorf("fake: seq %d reused for another request:\n first %v\n now   %v", req.GetSeq(), r.req, req)
	}
	f.mu.retries = append(f.mu.retries, req.GetSeq())
	resp, ok := r.resp.(*pb.AcquireResponse)
	if !ok {
		return nil, &transport.InvalidError{Field: "seq", Reason: "seq reused for another request"}
	}
	// Remembered, not decided now: a node says so and reports no queue
	// time for it (an old node kept the first one).
	resp = proto.Clone(resp).(*pb.AcquireResponse)
	resp.Decided = false
	if !f.mu.oldNode {
		resp.QueuedNs = 0
	}
	return f.answer(resp)
}

// answer returns resp, or loses it if failApplied says so.
func (f *fakeCluster) answer(resp *pb.AcquireResponse) (*pb.AcquireResponse, error) {
	if f.mu.failApplied > 0 {
		f.mu.failApplied--
		return nil, fmt.Errorf("%w: leadership lost after apply", transport.ErrUnknownOutcome)
	}
	return resp, nil
}

// stripAck returns a copy of a request without its acked_below, which a
// retry may change.
func stripAck(m proto.Message) proto.Message {
	m = proto.Clone(m)
	switch r := m.(type) {
	case *pb.AcquireRequest:
		r.AckedBelow = 0
	case *pb.ReleaseRequest:
		r.AckedBelow = 0
	case *pb.ChargeRequest:
		r.AckedBelow = 0
	case *pb.ExtendRequest:
		r.AckedBelow = 0
	case *pb.RestrictRequest:
		r.AckedBelow = 0
	}
	return m
}

// keyLocked returns key's state, made from lim if the key is new; nil if it
// is new and lim is nil.
func (f *fakeCluster) keyLocked(key string, lim *pb.Limit) (*fakeKey, error) {
	if k, ok := f.mu.keys[key]; ok {
		return k, nil
	}
	if lim == nil {
		return nil, transport.ErrNoLimit
	}
	ml := time.Duration(lim.GetMaxLeaseNs())
	if ml == 0 {
		ml = 2 * time.Second
	}
	k := &fakeKey{limit: lim.GetLimit(), maxLease: ml, maxDebt: lim.GetMaxDebt(), floor: math.MinInt64}
	if lim.GetAlgorithm() == pb.Algorithm_CONCURRENCY {
		k.conc = true
	} else {
		burst := lim.GetBurst()
		if burst == 0 || lim.GetAlgorithm() == pb.Algorithm_SLIDING_WINDOW {
			burst = lim.GetLimit()
		}
		b, err := limiter.NewTokenBucket(lim.GetLimit(), time.Duration(lim.GetPeriodNs()), burst)
		if err != nil {
			return nil, &transport.InvalidError{Field: "limit", Reason: err.Error()}
		}
		k.bucket = b
	}
	f.mu.keys[key] = k
	return k, nil
}

// available returns what k could grant now.
func (k *fakeKey) available(now int64) int64 {
	if k.conc {
		return k.limit - k.held
	}
	return k.bucket.Available(k.state, now)
}

// expireLocked ends the leases whose life is over: their concurrency units
// come back.
func (f *fakeCluster) expireLocked(now int64) {
	for id, ls := range f.mu.leases {
		if ls.expires <= now {
			f.endLeaseLocked(id, ls)
		}
	}
}

func (f *fakeCluster) endLeaseLocked(id uint64, ls *fakeLease) {
	for _, it := range ls.items {
		if k := f.mu.keys[it.key]; k != nil && k.conc {
			k.held -= it.granted
		}
	}
	delete(f.mu.leases, id)
}

// applyAcquire decides an Acquire like the real state machine: all or
// nothing on the items' counts, then, for a lease, a share of what is left
// up to each item's want, split among the key's lessees (the clients
// holding live leases on it, the asker counted once; reported in the
// answer, the most of any item), and for a central decision all of it. A
// concurrency item takes its count only, and needs a lease. Unlike the real
// one it grants no share of the refill and paces a lease only if told to
// (mu.pace): fsm tests the rule, the client tests obey it.
func (f *fakeCluster) applyAcquire(req *pb.AcquireRequest) (*pb.AcquireResponse, error) {
	now := f.now()
	f.expireLocked(now)
	var keys []*fakeKey
	ttl := req.GetTtlNs()
	for _, it := range req.GetItems() {
		k, err := f.keyLocked(it.GetKey(), it.GetLimit())
		if err != nil {
			return nil, err
		}
		keys = append(keys, k)
		ttl = min(ttl, int64(k.maxLease))
	}
	if f.mu.noLease {
		ttl = 0
	}
	// As fsm: a concurrency key needs a lease, which a key that grants
	// none (maxLease 0) in the same acquire cuts to ttl 0.
	for i, k := range keys {
		if k.conc && ttl == 0 {
			return nil, &transport.InvalidError{Reason: fmt.Sprintf(
				"key %q is a concurrency limit: it needs a lease TTL above 0, and no strict bucket in the same acquire", req.GetItems()[i].GetKey())}
		}
	}
	// The keys' lessees, the asking client counted once (as fsm counts
	// them), or what the test says.
	var n int32
	for _, it := range req.GetItems() {
		lessees := map[string]bool{string(req.GetClientId()): true}
		for _, ls := range f.mu.leases {
			for _, li := range ls.items {
				if li.key == it.GetKey() {
					lessees[ls.client] = true
				}
			}
		}
		n = max(n, int32(len(lessees)))
	}
	if f.mu.lessees > 0 {
		n = f.mu.lessees
	}
	if now < int64(f.mu.denyUntil.Sub(f.start)) {
		return &pb.AcquireResponse{RetryAfterNs: int64(f.mu.denyUntil.Sub(f.start)) - now, LogTimeNs: now, Lessees: n}, nil
	}
	// All or nothing on the counts.
	denied, retry := false, int64(0)
	for i, it := range req.GetItems() {
		k := keys[i]
		if k.conc {
			if k.held+it.GetCount() > k.limit {
				denied = true
				ra := int64(k.maxLease)
				if it.GetCount() > k.limit {
					ra = -1
				}
				retry = maxRetry(retry, ra)
			}
			continue
		}
		if d := k.bucket.Check(k.state, now, it.GetCount()); !d.Allowed {
			denied = true
			ra := int64(d.RetryAfter)
			if d.RetryAfter == limiter.Never {
				ra = -1
			}
			retry = maxRetry(retry, ra)
		}
	}
	if denied {
		resp := &pb.AcquireResponse{RetryAfterNs: retry, LogTimeNs: now, Lessees: n}
		for _, k := range keys {
			resp.Items = append(resp.Items, &pb.ItemGrant{Remaining: k.available(now)})
		}
		return resp, nil
	}
	resp := &pb.AcquireResponse{Allowed: true, TtlNs: ttl, LogTimeNs: now, Lessees: n}
	var items []fakeItem
	for i, it := range req.GetItems() {
		k := keys[i]
		granted := it.GetCount()
		if k.conc {
			k.held += granted
		} else {
			k.bucket.Take(&k.state, now, granted)
			if want := max(it.GetWant(), it.GetCount()); want > granted {
				// A lease gets a share of the stock; a central decision
				// (ttl 0 asked) all it wants that is there, as fsm grants
				// them.
				share := k.bucket.Available(k.state, now)
				if req.GetTtlNs() > 0 {
					share /= int64(n)
				}
				if extra := min(want-granted, share); extra > 0 {
					k.bucket.Take(&k.state, now, extra)
					granted += extra
				}
			}
		}
		resp.Items = append(resp.Items, &pb.ItemGrant{Granted: granted, Remaining: k.available(now)})
		items = append(items, fakeItem{key: it.GetKey(), granted: granted})
		if !k.conc {
			f.ledgerLocked(it.GetKey()).granted += granted
		}
	}
	if g := int64(f.mu.piece); g > 0 && ttl > 0 && req.GetPaced() && len(items) == 1 &&
		req.GetItems()[0].GetLimit().GetAlgorithm() == pb.Algorithm_SLIDING_WINDOW {
		k0 := now / g
		last := max((now+ttl-1)/g, k0+1)
		first := max(k0, req.GetPacedAfterNs()/g)
		if first > last {
			keys[0].bucket.Return(&keys[0].state, now, items[0].granted)
			f.ledgerLocked(items[0].key).granted -= items[0].granted
			return &pb.AcquireResponse{RetryAfterNs: max((first-1)*g-now, 1), LogTimeNs: now, Lessees: n}, nil
		}
		ttl = (last+1)*g - now
		resp.TtlNs, resp.Pieces, resp.PieceNs = ttl, int32(last-first+1), g
	}
	if span := req.GetSpanNs(); req.GetTtlNs() == 0 && span > 0 && !f.mu.oldNode {
		// A central decision asked with a span (fsm: Acquire.Span and
		// SpanBuckets): answered with the span, capped like a lease by
		// each key's max lease, the time after its stamp within which it
		// may be spent. The fake counts windows at the instant, as it
		// counts them as token buckets; an old node ignores the field
		// (and token buckets answer it only when asked, span_buckets,
		// and not by a cluster below the command level of SpanBuckets:
		// spanlessBuckets; nor by a key that grants no leases, which has
		// no MaxLease to answer).
		spanned := false
		for i, it := range req.GetItems() {
			if it.GetLimit().GetAlgorithm() == pb.Algorithm_SLIDING_WINDOW || (req.GetSpanBuckets() && !f.mu.spanlessBuckets && keys[i].maxLease > 0) {
				spanned, span = true, min(span, int64(keys[i].maxLease))
			}
		}
		if spanned {
			resp.TtlNs = span
		}
	}
	if ttl > 0 {
		resp.LeaseId = f.mu.nextLease
		f.mu.nextLease++
		f.mu.leases[resp.LeaseId] = &fakeLease{key: items[0].key, client: string(req.GetClientId()),
			granted: items[0].granted, items: items, expires: now + ttl}
		resp.RetryAfterNs = int64(f.mu.pace)
	}
	return resp, nil
}

// maxRetry returns the later of two retry-afters, -1 (never) the latest.
func maxRetry(a, b int64) int64 {
	if a < 0 || b < 0 {
		return -1
	}
	return max(a, b)
}

func (nd *fakeNode) Release(ctx context.Context, req *pb.ReleaseRequest) (*pb.ReleaseResponse, error) {
	f := nd.c
	f.mu.Lock()
	defer f.mu.Unlock()
	if d := f.mu.releaseDelay; d > 0 {
		f.mu.Unlock()
		time.Sleep(d)
		f.mu.Lock()
	}
	if err := nd.serving(); err != nil {
		return nil, err
	}
	f.mu.releases = append(f.mu.releases, proto.Clone(req).(*pb.ReleaseRequest))
	now := f.now()
	f.expireLocked(now)
	ls, ok := f.mu.leases[req.GetLeaseId()]
	if !ok {
		return &pb.ReleaseResponse{LogTimeNs: now}, nil
	}
	if ls.client != string(req.GetClientId()) {
		return nil, &transport.InvalidError{Field: "lease_id", Reason: "another client's lease"}
	}
	u := req.GetUnused()
	if len(u) != 0 && len(u) != len(ls.items) {
		return nil, &transport.InvalidError{Field: "unused", Reason: fmt.Sprintf("%d counts for a lease of %d items", len(u), len(ls.items))}
	}
	for i, it := range ls.items {
		if len(u) != 0 && (u[i] < 0 || u[i] > it.granted) {
			return nil, &transport.InvalidError{Field: fmt.Sprintf("unused[%d]", i), Reason: "more than granted"}
		}
	}
	for i, it := range ls.items {
		k := f.mu.keys[it.key]
		if k.conc {
			continue // endLeaseLocked returns the units
		}
		unused := it.granted
		if len(u) != 0 {
			unused = u[i]
		}
		k.bucket.Return(&k.state, now, unused)
		k.state.TAT = max(k.state.TAT, k.floor) // a refund undoes no Restrict
		f.ledgerLocked(it.key).returned += unused
	}
	f.endLeaseLocked(req.GetLeaseId(), ls)
	return &pb.ReleaseResponse{Released: true, LogTimeNs: now}, nil
}

// remembered returns the result of a request whose seq has one, checking
// it is the same request.
func (f *fakeCluster) remembered(client []byte, seq uint64, req proto.Message) (proto.Message, bool) {
	r, ok := f.mu.results[resultKey(client, seq)]
	if !ok {
		return nil, false
	}
	if !proto.Equal(stripAck(r.req), stripAck(req)) && f.tb != nil {
		f.tb.Errorf("fake: seq %d reused for another request:\n first %v\n now   %v", seq, r.req, req)
	}
	f.mu.retries = append(f.mu.retries, seq)
	return r.resp, true
}

func (nd *fakeNode) Charge(_ context.Context, req *pb.ChargeRequest) (*pb.ChargeResponse, error) {
	f := nd.c
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := nd.serving(); err != nil {
		return nil, err
	}
	if r, ok := f.remembered(req.GetClientId(), req.GetSeq(), req); ok {
		if f.mu.loseCharges > 0 {
			f.mu.loseCharges--
			return nil, fmt.Errorf("%w: leadership lost after apply", transport.ErrUnknownOutcome)
		}
		return r.(*pb.ChargeResponse), nil
	}
	now := f.now()
	f.expireLocked(now)
	var keys []*fakeKey
	for _, it := range req.GetItems() {
		k, err := f.keyLocked(it.GetKey(), it.GetLimit())
		if err != nil {
			return nil, err
		}
		if k.conc {
			return nil, &transport.InvalidError{Field: "items", Reason: "a charge applies to token buckets only"}
		}
		keys = append(keys, k)
	}
	resp := &pb.ChargeResponse{LogTimeNs: now}
	for i, it := range req.GetItems() {
		k := keys[i]
		charged := k.bucket.Charge(&k.state, now, it.GetTokens(), k.maxDebt)
		f.ledgerLocked(it.GetKey()).charged += charged
		resp.Items = append(resp.Items, &pb.ChargeItemResult{Charged: charged, Forgiven: it.GetTokens() - charged,
			Remaining: k.bucket.Level(k.state, now)})
		resp.RetryAfterNs = max(resp.RetryAfterNs, int64(k.bucket.Check(k.state, now, 1).RetryAfter))
	}
	f.mu.charges = append(f.mu.charges, proto.Clone(req).(*pb.ChargeRequest))
	f.mu.results[resultKey(req.GetClientId(), req.GetSeq())] = &fakeResult{req: proto.Clone(req), resp: resp}
	if f.mu.loseCharges > 0 {
		f.mu.loseCharges--
		return nil, fmt.Errorf("%w: leadership lost after apply", transport.ErrUnknownOutcome)
	}
	return resp, nil
}

func (nd *fakeNode) Extend(_ context.Context, req *pb.ExtendRequest) (*pb.ExtendResponse, error) {
	f := nd.c
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := nd.serving(); err != nil {
		return nil, err
	}
	if r, ok := f.remembered(req.GetClientId(), req.GetSeq(), req); ok {
		return r.(*pb.ExtendResponse), nil
	}
	now := f.now()
	f.expireLocked(now)
	f.mu.extends = append(f.mu.extends, proto.Clone(req).(*pb.ExtendRequest))
	resp := &pb.ExtendResponse{LogTimeNs: now}
	if ls, ok := f.mu.leases[req.GetLeaseId()]; ok {
		if ls.client != string(req.GetClientId()) {
			return nil, &transport.InvalidError{Field: "lease_id", Reason: "another client's lease"}
		}
		life := req.GetTtlNs()
		for _, it := range ls.items {
			life = min(life, int64(f.mu.keys[it.key].maxLease))
		}
		ls.expires = max(ls.expires, now+life)
		resp.Extended, resp.TtlNs = true, ls.expires-now
	}
	f.mu.results[resultKey(req.GetClientId(), req.GetSeq())] = &fakeResult{req: proto.Clone(req), resp: resp}
	return resp, nil
}

func (nd *fakeNode) Restrict(_ context.Context, req *pb.RestrictRequest) (*pb.RestrictResponse, error) {
	f := nd.c
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := nd.serving(); err != nil {
		return nil, err
	}
	if r, ok := f.remembered(req.GetClientId(), req.GetSeq(), req); ok {
		return r.(*pb.RestrictResponse), nil
	}
	now := f.now()
	f.expireLocked(now)
	var keys []*fakeKey
	for _, it := range req.GetItems() {
		k, err := f.keyLocked(it.GetKey(), it.GetLimit())
		if err != nil {
			return nil, err
		}
		if k.conc {
			return nil, &transport.InvalidError{Field: "items", Reason: "a restrict applies to token buckets only"}
		}
		keys = append(keys, k)
	}
	resp := &pb.RestrictResponse{LogTimeNs: now}
	for i, it := range req.GetItems() {
		k := keys[i]
		before := k.bucket.Level(k.state, now)
		floor := limiter.BucketState{TAT: math.MinInt64}
		if b := it.GetBlockedForNs(); b > 0 {
			k.bucket.BlockUntil(&floor, now+b)
		}
		if it.Remaining != nil {
			k.bucket.Lower(&floor, now, min(it.GetRemaining(), k.bucket.Burst()))
		}
		k.floor = max(k.floor, floor.TAT)
		k.state.TAT = max(k.state.TAT, floor.TAT)
		after := k.bucket.Level(k.state, now)
		resp.Items = append(resp.Items, &pb.RestrictItemResult{Remaining: after, Lowered: before - after})
		resp.RetryAfterNs = max(resp.RetryAfterNs, int64(k.bucket.Check(k.state, now, 1).RetryAfter))
	}
	f.mu.restricts = append(f.mu.restricts, proto.Clone(req).(*pb.RestrictRequest))
	f.mu.results[resultKey(req.GetClientId(), req.GetSeq())] = &fakeResult{req: proto.Clone(req), resp: resp}
	return resp, nil
}

func (nd *fakeNode) Status(context.Context, *pb.StatusRequest) (*pb.StatusResponse, error) {
	f := nd.c
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.mu.down || f.mu.statusDown {
		return nil, fmt.Errorf("%w: fake down", transport.ErrUnknownOutcome)
	}
	st := &pb.StatusResponse{NodeId: nd.id, NodeState: pb.NodeState_NODE_STATE_FOLLOWER}
	if f.mu.leader >= 0 {
		st.LeaderId = f.nodes[f.mu.leader].id
		if f.mu.leader == nd.idx {
			st.NodeState = pb.NodeState_NODE_STATE_LEADER
		}
	}
	return st, nil
}

// serving returns the error a node answers a write with, if any.
func (nd *fakeNode) serving() error {
	f := nd.c
	switch {
	case f.mu.down:
		return fmt.Errorf("%w: fake down", transport.ErrUnknownOutcome)
	case f.mu.leader != nd.idx:
		nl := &transport.NotLeaderError{}
		if f.mu.leader >= 0 {
			nl.LeaderID = f.nodes[f.mu.leader].id
			if f.mu.leaderAddr {
				nl.LeaderClientAddr = f.addrs()[f.mu.leader]
			}
		}
		return nl
	}
	return nil
}

func (nd *fakeNode) SetLimit(context.Context, *pb.SetLimitRequest) (*pb.SetLimitResponse, error) {
	return nil, fmt.Errorf("fake: SetLimit not implemented")
}

func (nd *fakeNode) GetLimit(context.Context, *pb.GetLimitRequest) (*pb.GetLimitResponse, error) {
	return nil, fmt.Errorf("fake: GetLimit not implemented")
}

func (nd *fakeNode) DeleteLimit(context.Context, *pb.DeleteLimitRequest) (*pb.DeleteLimitResponse, error) {
	return nil, fmt.Errorf("fake: DeleteLimit not implemented")
}

// AcquireStream is not served in-process: the Client's Acquire calls
// Acquire directly when its API is a directAPI.
func (d directAPI) AcquireStream(context.Context, ...grpc.CallOption) (grpc.BidiStreamingClient[pb.AcquireStreamRequest, pb.AcquireStreamResponse], error) {
	return nil, status.Error(codes.Unimplemented, "directAPI: no AcquireStream")
}
