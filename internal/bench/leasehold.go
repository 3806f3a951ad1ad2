package bench

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/bits"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/leasehold/leasehold/client"
	"github.com/leasehold/leasehold/client/promcollector"
	"github.com/leasehold/leasehold/internal/proc"
	"github.com/leasehold/leasehold/transport"
	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

// Mode is how the SDK decides on the bench's keys. Values are stable.
type Mode int

const (
	// ModeLease: the SDK leases batches of tokens and admits locally.
	ModeLease Mode = 1
	// ModeCentral: every Allow is one Acquire with TTL 0, a Raft commit.
	ModeCentral Mode = 2
)

// String returns "lease" or "central".
func (m Mode) String() string {
	switch m {
	case ModeLease:
		return "lease"
	case ModeCentral:
		return "central"
	}
	return fmt.Sprintf("Mode(%d)", int(m))
}

// ParseMode parses "lease" or "central".
func ParseMode(s string) (Mode, error) {
	switch s {
	case "lease":
		return ModeLease, nil
	case "central":
		return ModeCentral, nil
	}
	return 0, fmt.Errorf("mode %q: want lease or central", s)
}

// leaseLife is the MaxLease the bench gives its leased keys: the cluster's
// default, named so that the envelope's Λ is the limit's, not an assumption.
const leaseLife = 2 * time.Second

// KeyLimit returns the limit the bench sets on its keys for mode, and the
// envelope it is checked against.
//
// Lease mode is a plain token bucket with MaxLease 2s: envelope B + r·(Δ+2s).
// Central mode is the SDK's own rule for keys it must not lease: a Strict
// bucket whose reserve ⌈r·MaxLease⌉ is the whole burst grants no leases, so
// the cluster and the SDK decide each request centrally (client/DESIGN.md,
// "Central mode"). MaxLease is the shortest span that refills the burst,
// ⌈B·Per/Limit⌉ (at most 1 minute); the envelope is then B + r·Δ.
func KeyLimit(mode Mode, rate, burst int64, per time.Duration) (client.Limit, Envelope, error) {
	if rate <= 0 || burst <= 0 || per <= 0 {
		return client.Limit{}, Envelope{}, fmt.Errorf("rate %d, burst %d and per %v must be positive", rate, burst, per)
	}
	lim := client.Limit{Rate: rate, Per: per, Burst: burst}
	env := Envelope{Burst: burst, Limit: rate, Per: per}
	switch mode {
	case ModeLease:
		lim.MaxLease, env.Lease = leaseLife, leaseLife
	case ModeCentral:
		// ⌈burst·per/rate⌉ ns, in 128 bits.
		hi, lo := bits.Mul64(uint64(burst), uint64(per))
		if hi >= uint64(rate) {
			return client.Limit{}, Envelope{}, fmt.Errorf("central mode: burst %d needs more than a minute of refill at %d per %v", burst, rate, per)
		}
		q, r := bits.Div64(hi, lo, uint64(rate))
		if r != 0 {
			q++
		}
		if q > uint64(transport.MaxLeaseTTL) {
			return client.Limit{}, Envelope{}, fmt.Errorf("central mode: burst %d needs more than %v of refill at %d per %v", burst, transport.MaxLeaseTTL, rate, per)
		}
		lim.Strict, lim.MaxLease = true, time.Duration(max(q, 1))
	default:
		return client.Limit{}, Envelope{}, fmt.Errorf("unknown mode %v", mode)
	}
	return lim, env, nil
}

// proto returns lim as the admin API takes it.
func limitProto(lim client.Limit) *pb.Limit {
	p := &pb.Limit{Algorithm: pb.Algorithm_TOKEN_BUCKET, Limit: lim.Rate, PeriodNs: int64(lim.Per),
		Burst: lim.Burst, Strict: lim.Strict, MaxLeaseNs: int64(lim.MaxLease)}
	if lim.Algorithm == client.SlidingWindow {
		p.Algorithm, p.Burst, p.Strict, p.Slots = pb.Algorithm_SLIDING_WINDOW, 0, false, int32(lim.Slots)
	}
	return p
}

// Admin talks to a cluster's admin API (SetLimit, Status) over one gRPC
// connection per node (a proc.Admin, as `leasehold limits` and `leasehold
// status` use). It is safe for concurrent use.
type Admin struct {
	admin *proc.Admin
}

// TLSFiles are the PEM files of a certificate, its key and the CA bundle
// (proc's: DialOption makes the connections' credentials).
type TLSFiles = proc.TLSFiles

// DialAdmin connects lazily to every endpoint, secured as sec says (TLS
// with an operator's certificate, as the bench sets limits, or plain text
// to a cluster serving it).
func DialAdmin(endpoints []string, sec proc.Security) (*Admin, error) {
	a, err := proc.Dial(endpoints, sec)
	if err != nil {
		return nil, err
	}
	return &Admin{admin: a}, nil
}

// Close closes the connections.
func (a *Admin) Close() { _ = a.admin.Close() }

// Leader returns the node that reports itself leader, and its commit index
// (the Raft entries committed so far), waiting up to leaderWait for one.
func (a *Admin) Leader(ctx context.Context) (id string, commit uint64, err error) {
	// An election may be under way (a run's own load can starve a
	// heartbeat on a small machine): wait for it rather than fail the run
	// (bench compare runs aborted with "no node is the leader").
	ctx, cancel := context.WithTimeout(ctx, leaderWait)
	defer cancel()
	st, err := a.admin.WaitLeader(ctx)
	if err != nil {
		return "", 0, err
	}
	return st.Status.GetNodeId(), st.Status.GetCommitIndex(), nil
}

// leaderWait is how long Leader waits for a node to lead.
const leaderWait = 15 * time.Second

// SetLimit sets key's limit on the leader, trying each node in turn (a
// follower answers NotLeader) until one accepts or ctx ends.
func (a *Admin) SetLimit(ctx context.Context, key string, lim client.Limit) error {
	req := &pb.SetLimitRequest{Key: key, Limit: limitProto(lim)}
	_, err := proc.OnLeader(ctx, a.admin, func(ctx context.Context, api pb.LeaseholdClient) (*pb.SetLimitResponse, error) {
		return api.SetLimit(ctx, req)
	})
	if err != nil {
		return fmt.Errorf("set limit of %q: %w", key, err)
	}
	return nil
}

// SDKCounts are the requests the SDK sent, from its Trace (each logical
// request once, retries not counted), and who decided its calls (Decided).
type SDKCounts struct {
	Acquires       int64 // Acquire requests (lease refreshes or central decisions)
	AcquireDenied  int64 // answered "no"
	AcquireFailed  int64 // ended without an answer
	AcquireFull    int64 // refused because the cluster is full (transport.ErrFull: --max-keys, --max-sessions)
	Releases       int64 // Release requests
	GrantedTokens  int64 // tokens granted by answered Acquires
	ReleasedTokens int64 // tokens given back by Releases
	Decided        Sources
}

// Sources counts the SDK's Allow calls by who decided them, summed over
// the Clients' Stats (client.Stats; the bench asks one token per call, so
// its tokens are calls).
type Sources struct {
	// Admitted from a lease held, by a central decision of the cluster,
	// or by the failure policy while the cluster did not answer
	// (Stats.Admitted).
	Leased, Central, FallbackAdmitted int64
	// Refused by the cluster (now, or recently and the SDK remembered:
	// Stats.Denied.Cluster); by the SDK because a sliding window's central
	// grant was answered after the span the window counted it over
	// (Stats.Denied.LateAnswer); by the failure policy while the cluster
	// did not answer (Stats.Denied.Unreachable: FailClosed, the default);
	// or by a Limiter that admits nothing (closed, invalid key or limit).
	//
	// A late answer's refusal is a denial like the others in the calls
	// recorded: the cluster had granted the token, so the limit may not
	// have required it, and Envelope.Spurious counts it when admitting it
	// too would have kept the key within B + r·Δ. Late answers come only
	// from sliding windows, for which spurious denials are not counted.
	ClusterDenied, LateAnswer, FallbackDenied, Unusable int64
}

// Fallback returns the calls the failure policy decided, not the
// cluster: admitted or refused while it did not answer.
func (d Sources) Fallback() int64 { return d.FallbackAdmitted + d.FallbackDenied }

// add adds a Client's Stats to d.
func (d *Sources) add(st client.Stats) {
	d.Leased += int64(st.Admitted.Leased)
	d.Central += int64(st.Admitted.Central)
	d.FallbackAdmitted += int64(st.Admitted.Fallback)
	d.ClusterDenied += int64(st.Denied.Cluster)
	d.LateAnswer += int64(st.Denied.LateAnswer)
	d.FallbackDenied += int64(st.Denied.Unreachable)
	d.Unusable += int64(st.Denied.Unusable)
}

// counters is SDKCounts, updated by Trace callbacks on many goroutines.
type counters struct {
	acquires, denied, failed, full, releases, granted, released atomic.Int64
}

func (c *counters) trace() *client.Trace {
	return &client.Trace{
		AcquireStart: func(client.AcquireStartInfo) { c.acquires.Add(1) },
		AcquireDone: func(i client.AcquireDoneInfo) {
			switch {
			case errors.Is(i.Err, transport.ErrFull):
				c.full.Add(1)
			case i.Err != nil:
				c.failed.Add(1)
			case !i.Allowed:
				c.denied.Add(1)
			default:
				c.granted.Add(i.Granted)
			}
		},
		ReleaseStart: func(i client.ReleaseStartInfo) {
			c.releases.Add(1)
			c.released.Add(i.Unused)
		},
	}
}

func (c *counters) snapshot() SDKCounts {
	return SDKCounts{Acquires: c.acquires.Load(), AcquireDenied: c.denied.Load(), AcquireFailed: c.failed.Load(), AcquireFull: c.full.Load(),
		Releases: c.releases.Load(), GrantedTokens: c.granted.Load(), ReleasedTokens: c.released.Load()}
}

// Fleet is n SDK Clients, one per simulated process, each with a Limiter
// for every key. One Client per worker, rather than one shared by all: a
// Client is what a process has, with its own leases, client id, connections
// and demand estimate, so n Clients put n lessees on a hot key, each
// getting a fair share, as n processes on n machines would. One shared
// Client would measure one process with n goroutines, which asks the
// cluster n times less often. It is safe for concurrent use.
type Fleet struct {
	clients  []*client.Client
	limiters [][]*client.Limiter // [client][key]
	counts   counters
	closed   Sources // of the Clients Close closed
}

// DialFleet dials n Clients to endpoints, each with a Limiter of lim for
// every key and opts (WithTLS, ...). Logs go to log (nil: discarded).
func DialFleet(ctx context.Context, endpoints []string, n int, keys []string, lim client.Limit, log *slog.Logger, opts ...client.Option) (*Fleet, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	f := &Fleet{}
	tr := f.counts.trace()
	for range n {
		c, err := client.Dial(ctx, endpoints, append([]client.Option{client.WithTrace(tr), client.WithLogger(log)}, opts...)...)
		if err != nil {
			f.Close()
			return nil, err
		}
		f.clients = append(f.clients, c)
		ls := make([]*client.Limiter, len(keys))
		for k, key := range keys {
			ls[k] = c.Limiter(key, lim)
		}
		f.limiters = append(f.limiters, ls)
	}
	return f, nil
}

// Deciders returns one Decider per Client.
func (f *Fleet) Deciders() []Decider {
	out := make([]Decider, len(f.limiters))
	for i, ls := range f.limiters {
		out[i] = sdkDecider(ls)
	}
	return out
}

type sdkDecider []*client.Limiter

func (d sdkDecider) Allow(k int) (bool, error) { return d[k].Allow(), nil }

// States counts the Limiters in each state.
func (f *Fleet) States() map[client.State]int {
	out := map[client.State]int{}
	for _, ls := range f.limiters {
		for _, l := range ls {
			out[l.State()]++
		}
	}
	return out
}

// Counts returns the requests the SDK has sent so far, and who decided
// its calls. Not safe for use concurrently with Close.
func (f *Fleet) Counts() SDKCounts {
	c := f.counts.snapshot()
	c.Decided = f.closed
	for _, cl := range f.clients {
		c.Decided.add(cl.Stats())
	}
	return c
}

// Close closes every Client in parallel (each gives back its unused
// tokens) and waits for them; Counts still counts what they decided.
func (f *Fleet) Close() error {
	var wg sync.WaitGroup
	errs := make([]error, len(f.clients))
	for i, c := range f.clients {
		wg.Go(func() { errs[i] = c.Close() })
	}
	wg.Wait()
	for _, c := range f.clients {
		f.closed.add(c.Stats())
	}
	f.clients = nil
	return errors.Join(errs...)
}

// scrape registers a promcollector.Collector for each Client in a registry
// of its own and gathers every registry each interval until the returned
// stop is called; stop waits for the scraper and returns how many gathers
// it made. With nothing, the scraper wakes each interval and does nothing
// (Hooks.ScrapeNothing).
func (f *Fleet) scrape(interval time.Duration, nothing bool) (stop func() int64, err error) {
	var regs []*prometheus.Registry
	for _, c := range f.clients {
		if nothing {
			break
		}
		col, err := promcollector.New(c, promcollector.DefaultConfig())
		if err != nil {
			return nil, err
		}
		reg := prometheus.NewRegistry()
		if err := reg.Register(col); err != nil {
			return nil, err
		}
		regs = append(regs, reg)
	}
	done := make(chan struct{})
	var gathers atomic.Int64
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
			}
			for _, r := range regs {
				if _, err := r.Gather(); err == nil {
					gathers.Add(1)
				}
			}
		}
	})
	return func() int64 {
		close(done)
		wg.Wait()
		return gathers.Load()
	}, nil
}
