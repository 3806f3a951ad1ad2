package client_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
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
		retries   []uint64               // seqs answered from the dedup table

		down        bool          // every node answers UNAVAILABLE
		statusDown  bool          // Status fails on every node
		delay       time.Duration // an Acquire applies this long after it arrives
		replyDelay  time.Duration // and is answered this long after it applies
		failApplied int           // so many Acquires apply, then answer UNAVAILABLE
		hold        chan struct{} // Acquires wait for this to close
		blocked     int           // Acquires waiting on hold
		noLease     bool          // grant central decisions (ttl 0) only
		noLimit     bool          // answer ErrNoLimit
		denyUntil   time.Time     // deny every Acquire until then
		paused      int           // node index+1 that never answers (a SIGSTOPped process); 0: none
		pace        time.Duration // every lease carries this pace (retry_after_ns on a grant)
		lessees     int32         // report this many lessees on every key; 0: count them
		// piece, if set, pieces the leases of paced acquires of sliding
		// windows into buckets of this width (log time from the fake's
		// start), as fsm does: at least two buckets, the last ending its
		// life's, none before paced_after_ns.
		piece time.Duration
	}
}

type fakeKey struct {
	bucket   limiter.TokenBucket
	state    limiter.BucketState
	maxLease time.Duration
}

type fakeLease struct {
	key     string
	client  string
	granted int64
	expires int64 // fake log time
}

type fakeResult struct {
	req  *pb.AcquireRequest
	resp *pb.AcquireResponse
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

func (f *fakeCluster) now() int64 { return int64(time.Since(f.start)) }

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

func (f *fakeCluster) blocked() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.mu.blocked
}

// granted returns the tokens granted by every Acquire the leader applied.
func (f *fakeCluster) granted() []int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []int64
	for _, r := range f.mu.results {
		if r.resp.GetAllowed() {
			out = append(out, r.resp.GetItems()[0].GetGranted())
		}
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
	rk := fmt.Sprintf("%x/%d", req.GetClientId(), req.GetSeq())
	if r, ok := f.mu.results[rk]; ok {
		// A retry: it must be the very same request, and gets the first
		// answer.
		if !proto.Equal(stripAck(r.req), stripAck(req)) && f.tb != nil {
			f.tb.Errorf("fake: seq %d reused for another request:\n first %v\n now   %v", req.GetSeq(), r.req, req)
		}
		f.mu.retries = append(f.mu.retries, req.GetSeq())
		return f.answer(r.resp)
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
	resp, err := f.applyAcquire(req)
	if err != nil {
		return nil, err
	}
	f.mu.results[rk] = &fakeResult{req: proto.Clone(req).(*pb.AcquireRequest), resp: resp}
	if d := f.mu.replyDelay; d > 0 {
		f.mu.Unlock()
		time.Sleep(d)
		f.mu.Lock()
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

func stripAck(r *pb.AcquireRequest) *pb.AcquireRequest {
	r = proto.Clone(r).(*pb.AcquireRequest)
	r.AckedBelow = 0
	return r
}

// applyAcquire decides an Acquire of one item like the real state machine: all
// or nothing on count, then, for a lease, a share of what is left up to want,
// split among the key's lessees (the clients holding live leases on it, the
// asker counted once; reported in the answer), and for a central decision
// all of it. Unlike the real one it grants no share of the refill and paces
// a lease only if told to (mu.pace): fsm tests the rule, the client tests
// obey it.
func (f *fakeCluster) applyAcquire(req *pb.AcquireRequest) (*pb.AcquireResponse, error) {
	now := f.now()
	it := req.GetItems()[0]
	k, ok := f.mu.keys[it.GetKey()]
	if !ok {
		lim := it.GetLimit()
		if lim == nil {
			return nil, transport.ErrNoLimit
		}
		burst := lim.GetBurst()
		if burst == 0 || lim.GetAlgorithm() == pb.Algorithm_SLIDING_WINDOW {
			burst = lim.GetLimit()
		}
		b, err := limiter.NewTokenBucket(lim.GetLimit(), time.Duration(lim.GetPeriodNs()), burst)
		if err != nil {
			return nil, &transport.InvalidError{Field: "items[0].limit", Reason: err.Error()}
		}
		ml := time.Duration(lim.GetMaxLeaseNs())
		if ml == 0 {
			ml = 2 * time.Second
		}
		k = &fakeKey{bucket: b, maxLease: ml}
		f.mu.keys[it.GetKey()] = k
	}
	// The key's lessees, the asking client counted once (as fsm counts
	// them), or what the test says.
	lessees := map[string]bool{string(req.GetClientId()): true}
	for _, ls := range f.mu.leases {
		if ls.key == it.GetKey() && ls.expires > now {
			lessees[ls.client] = true
		}
	}
	n := int32(len(lessees))
	if f.mu.lessees > 0 {
		n = f.mu.lessees
	}
	if now < int64(f.mu.denyUntil.Sub(f.start)) {
		return &pb.AcquireResponse{RetryAfterNs: int64(f.mu.denyUntil.Sub(f.start)) - now, LogTimeNs: now, Lessees: n}, nil
	}
	d := k.bucket.Take(&k.state, now, it.GetCount())
	if !d.Allowed {
		ra := int64(d.RetryAfter)
		if d.RetryAfter == limiter.Never {
			ra = -1
		}
		return &pb.AcquireResponse{RetryAfterNs: ra, LogTimeNs: now, Lessees: n}, nil
	}
	granted := it.GetCount()
	ttl := min(req.GetTtlNs(), int64(k.maxLease))
	if f.mu.noLease {
		ttl = 0
	}
	if want := max(it.GetWant(), it.GetCount()); want > granted {
		// A lease gets a share of the stock; a central decision (ttl 0
		// asked) all it wants that is there, as fsm grants them.
		share := k.bucket.Available(k.state, now)
		if req.GetTtlNs() > 0 {
			share /= int64(n)
		}
		if extra := min(want-granted, share); extra > 0 {
			k.bucket.Take(&k.state, now, extra)
			granted += extra
		}
	}
	resp := &pb.AcquireResponse{Allowed: true, TtlNs: ttl, LogTimeNs: now, Lessees: n,
		Items: []*pb.ItemGrant{{Granted: granted, Remaining: k.bucket.Available(k.state, now)}}}
	if g := int64(f.mu.piece); g > 0 && ttl > 0 && req.GetPaced() && it.GetLimit().GetAlgorithm() == pb.Algorithm_SLIDING_WINDOW {
		k0 := now / g
		last := max((now+ttl-1)/g, k0+1)
		first := max(k0, req.GetPacedAfterNs()/g)
		if first > last {
			k.bucket.Return(&k.state, now, granted)
			return &pb.AcquireResponse{RetryAfterNs: max((first-1)*g-now, 1), LogTimeNs: now, Lessees: n}, nil
		}
		ttl = (last+1)*g - now
		resp.TtlNs, resp.Pieces, resp.PieceNs = ttl, int32(last-first+1), g
	}
	if ttl > 0 {
		resp.LeaseId = f.mu.nextLease
		f.mu.nextLease++
		f.mu.leases[resp.LeaseId] = &fakeLease{key: it.GetKey(), client: string(req.GetClientId()), granted: granted, expires: now + ttl}
		resp.RetryAfterNs = int64(f.mu.pace)
	}
	return resp, nil
}

func (nd *fakeNode) Release(ctx context.Context, req *pb.ReleaseRequest) (*pb.ReleaseResponse, error) {
	f := nd.c
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := nd.serving(); err != nil {
		return nil, err
	}
	f.mu.releases = append(f.mu.releases, proto.Clone(req).(*pb.ReleaseRequest))
	now := f.now()
	ls, ok := f.mu.leases[req.GetLeaseId()]
	if !ok || ls.expires <= now {
		return &pb.ReleaseResponse{LogTimeNs: now}, nil
	}
	unused := ls.granted
	if u := req.GetUnused(); len(u) > 0 {
		unused = u[0]
	}
	if unused > ls.granted {
		return nil, &transport.InvalidError{Field: "unused[0]", Reason: "more than granted"}
	}
	k := f.mu.keys[ls.key]
	k.bucket.Return(&k.state, now, unused)
	delete(f.mu.leases, req.GetLeaseId())
	return &pb.ReleaseResponse{Released: true, LogTimeNs: now}, nil
}

func (nd *fakeNode) Status(context.Context, *pb.StatusRequest) (*pb.StatusResponse, error) {
	f := nd.c
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.mu.down || f.mu.statusDown {
		return nil, fmt.Errorf("%w: fake down", transport.ErrUnknownOutcome)
	}
	st := &pb.StatusResponse{NodeId: nd.id, State: "follower"}
	if f.mu.leader >= 0 {
		st.LeaderId = f.nodes[f.mu.leader].id
		if f.mu.leader == nd.idx {
			st.State = "leader"
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

func (nd *fakeNode) Charge(context.Context, *pb.ChargeRequest) (*pb.ChargeResponse, error) {
	return nil, fmt.Errorf("fake: Charge not implemented")
}

func (nd *fakeNode) Extend(context.Context, *pb.ExtendRequest) (*pb.ExtendResponse, error) {
	return nil, fmt.Errorf("fake: Extend not implemented")
}

func (nd *fakeNode) Restrict(context.Context, *pb.RestrictRequest) (*pb.RestrictResponse, error) {
	return nil, fmt.Errorf("fake: Restrict not implemented")
}
