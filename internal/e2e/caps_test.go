package e2e

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/leasehold/leasehold/internal/proc"
	"github.com/leasehold/leasehold/transport"
	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

// century is the limit of a key that is never idle once drained, so never
// forgotten: a hundred years to refill one token.
var century = &pb.Limit{Algorithm: pb.Algorithm_TOKEN_BUCKET, Limit: 1, PeriodNs: int64(100 * 365 * 24 * time.Hour)}

// flood sends total Acquires from workers goroutines over app's connection,
// the i-th built by req(i), and returns how many were answered and how many
// refused as full. Any other error fails the test.
func flood(t *testing.T, app *proc.Admin, workers, total int, req func(i int) *pb.AcquireRequest) (answered, full int) {
	t.Helper()
	var (
		mu   sync.Mutex
		errs []error
		wg   sync.WaitGroup
	)
	next := make(chan int)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				_, err := proc.OnLeader(ctx, app, func(ctx context.Context, api pb.LeaseholdClient) (*pb.AcquireResponse, error) {
					return api.Acquire(ctx, req(i))
				})
				cancel()
				mu.Lock()
				switch {
				case err == nil:
					answered++
				case errors.Is(err, transport.ErrFull):
					full++
				default:
					errs = append(errs, err)
				}
				mu.Unlock()
			}
		}()
	}
	for i := range total {
		next <- i
	}
	close(next)
	wg.Wait()
	if len(errs) > 0 {
		t.Fatalf("%d of %d acquires failed other than full, first: %v", len(errs), total, errs[0])
	}
	return answered, full
}

// leaderStatus returns the leader's Status.
func leaderStatus(t *testing.T, c *procCluster) *pb.StatusResponse {
	t.Helper()
	return onLeader(t, c, 20*time.Second, func(ctx context.Context, api pb.LeaseholdClient) (*pb.StatusResponse, error) {
		return api.Status(ctx, &pb.StatusRequest{})
	})
}

// TestCapsBoundAClientCertificate is the attack of a client certificate on
// the state every node holds, over real TLS against serve --max-keys and
// --max-sessions: new keys with a hundred-year period (drained, so never
// swept), then a new client_id per request. Before the caps every one was
// applied; now the cluster stops at the cap plus the requests in flight
// (at most one per worker here), refuses the rest with RESOURCE_EXHAUSTED
// naming the cap, and still serves the keys and clients it holds.
func TestCapsBoundAClientCertificate(t *testing.T) {
	const maxKeys, maxSessions, workers = 100, 40, 8
	c := startCluster(t, 1, func(l *proc.Layout) {
		l.ExtraArgs = func(proc.NodeSpec) []string {
			return []string{fmt.Sprintf("--max-keys=%d", maxKeys), fmt.Sprintf("--max-sessions=%d", maxSessions)}
		}
	})
	app, _ := inlineRoles(t, c) // "set", an operator's key, and two clients
	mint := func(i int) *pb.AcquireRequest {
		return &pb.AcquireRequest{ClientId: []byte("e2e-caps-minter"), Seq: uint64(i + 1),
			Items: []*pb.AcquireItem{{Key: fmt.Sprintf("request-%06d", i), Count: 1, Limit: century}}}
	}
	answered, full := flood(t, app.admin, workers, 3*maxKeys, mint)
	st := leaderStatus(t, c)
	t.Logf("new keys: %d answered, %d refused as full; the leader holds %d keys", answered, full, st.GetKeys())
	if st.GetKeys() < maxKeys || st.GetKeys() > maxKeys+workers {
		t.Errorf("the leader holds %d keys after the flood, want %d to %d (the cap, plus one per worker in flight)",
			st.GetKeys(), maxKeys, maxKeys+workers)
	}
	if full < 3*maxKeys-maxKeys-workers {
		t.Errorf("%d of %d new keys refused, want at least %d", full, 3*maxKeys, 3*maxKeys-maxKeys-workers)
	}
	// The refusal says what and why, through the client API's mapping.
	_, err := proc.OnLeader(context.Background(), app.admin, func(ctx context.Context, api pb.LeaseholdClient) (*pb.AcquireResponse, error) {
		return api.Acquire(ctx, mint(10*maxKeys))
	})
	var fe *transport.FullError
	if !errors.As(err, &fe) || fe.Resource != transport.FullKeys || !strings.Contains(fe.Reason, "--max-keys") ||
		!strings.Contains(fe.Reason, fmt.Sprintf("%q is new", fmt.Sprintf("request-%06d", 10*maxKeys))) {
		t.Errorf("a new key at the cap: %v, want a *transport.FullError naming --max-keys and the key", err)
	}
	// A key the cluster holds is served.
	if _, err := app.acquire("set", nil); err != nil {
		t.Errorf("acquire of the operator's key at the cap: %v", err)
	}

	// New client_ids on a key the cluster holds.
	before := leaderStatus(t, c).GetSessions()
	visit := func(i int) *pb.AcquireRequest {
		return &pb.AcquireRequest{ClientId: fmt.Appendf(nil, "e2e-caps-visitor-%06d", i), Seq: 1,
			Items: []*pb.AcquireItem{{Key: "set", Count: 1}}}
	}
	answered, full = flood(t, app.admin, workers, 3*maxSessions, visit)
	st = leaderStatus(t, c)
	t.Logf("new client_ids: %d answered, %d refused as full; the leader holds %d sessions (%d before)",
		answered, full, st.GetSessions(), before)
	if st.GetSessions() < maxSessions || st.GetSessions() > maxSessions+workers {
		t.Errorf("the leader holds %d sessions after the flood, want %d to %d", st.GetSessions(), maxSessions, maxSessions+workers)
	}
	if full == 0 {
		t.Errorf("no new client_id refused of %d", 3*maxSessions)
	}
	// A client the cluster holds is served.
	if _, err := app.acquire("set", nil); err != nil {
		t.Errorf("acquire of a held client at the session cap: %v", err)
	}
}
