package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/leasehold/leasehold/internal/loopback"
	"github.com/leasehold/leasehold/transport"
	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

// binary is the leasehold binary under test, built by TestMain.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "leasehold-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "leasehold")
	build := exec.Command("go", "build", "-o", binary, "github.com/leasehold/leasehold/cmd/leasehold")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build leasehold:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// procCluster is a cluster of real serve processes on loopback.
type procCluster struct {
	t     testing.TB
	dir   string
	peers string // the --peers flag every node starts with
	nodes []*procNode
}

type procNode struct {
	id, grpcAddr, raftAddr, data, log string
	cmd                               *exec.Cmd
	exited                            chan struct{}
	conn                              *grpc.ClientConn
}

// startCluster starts n nodes and waits for a leader.
func startCluster(t testing.TB, n int) *procCluster {
	t.Helper()
	c := &procCluster{t: t, dir: t.TempDir()}
	ports, err := loopback.FreePorts(2 * n)
	if err != nil {
		t.Fatal(err)
	}
	var peers []string
	for i := range n {
		id := fmt.Sprintf("n%d", i+1)
		node := &procNode{
			id:       id,
			grpcAddr: fmt.Sprintf("127.0.0.1:%d", ports[i]),
			raftAddr: fmt.Sprintf("127.0.0.1:%d", ports[n+i]),
			data:     filepath.Join(c.dir, id),
			log:      filepath.Join(c.dir, id+".log"),
		}
		cc, err := grpc.NewClient(node.grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		node.conn = cc
		c.nodes = append(c.nodes, node)
		peers = append(peers, id+"="+node.raftAddr)
	}
	t.Cleanup(func() {
		for _, node := range c.nodes {
			c.kill(node)
			node.conn.Close()
		}
		if t.Failed() {
			for _, node := range c.nodes {
				b, _ := os.ReadFile(node.log)
				t.Logf("--- %s log (last 3000 bytes) ---\n%s", node.id, tail(b, 3000))
			}
		}
	})
	c.peers = strings.Join(peers, ",")
	for _, node := range c.nodes {
		c.start(node)
	}
	c.waitLeader(30 * time.Second)
	return c
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// start starts a node's serve process with the cluster's peers.
func (c *procCluster) start(node *procNode) {
	c.t.Helper()
	if err := os.MkdirAll(node.data, 0o755); err != nil {
		c.t.Fatal(err)
	}
	f, err := os.OpenFile(node.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		c.t.Fatal(err)
	}
	defer f.Close()
	node.cmd = exec.Command(binary, "serve", "--id", node.id, "--data", node.data,
		"--grpc-addr", node.grpcAddr, "--raft-addr", node.raftAddr, "--peers", c.peers, "--log-level", "debug")
	node.cmd.Stdout, node.cmd.Stderr = f, f
	if err := node.cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	node.exited = make(chan struct{})
	go func(cmd *exec.Cmd, exited chan struct{}) {
		_ = cmd.Wait()
		close(exited)
	}(node.cmd, node.exited)
}

// kill sends SIGKILL to a running node and waits for it to exit.
func (c *procCluster) kill(node *procNode) {
	c.signal(node, syscall.SIGKILL)
}

// stop sends SIGTERM (graceful stop) and waits for the node to exit.
func (c *procCluster) stop(node *procNode) {
	c.signal(node, syscall.SIGTERM)
}

func (c *procCluster) signal(node *procNode, sig syscall.Signal) {
	if node.cmd == nil {
		return
	}
	select {
	case <-node.exited:
	default:
		_ = node.cmd.Process.Signal(sig)
		select {
		case <-node.exited:
		case <-time.After(30 * time.Second):
			_ = node.cmd.Process.Kill()
			<-node.exited
		}
	}
	node.cmd = nil
}

func (c *procCluster) endpoints() []string {
	var out []string
	for _, n := range c.nodes {
		out = append(out, n.grpcAddr)
	}
	return out
}

// waitLeader waits until a running node reports itself leader and returns it.
func (c *procCluster) waitLeader(limit time.Duration) *procNode {
	c.t.Helper()
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		for _, node := range c.nodes {
			if node.cmd == nil {
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			st, err := pb.NewLeaseholdClient(node.conn).Status(ctx, &pb.StatusRequest{})
			cancel()
			if err == nil && st.State == "leader" {
				return node
			}
		}
		time.Sleep(50 * time.Millisecond) // polling a condition, bounded by the deadline
	}
	c.t.Fatalf("no leader within %v", limit)
	return nil
}

// onLeader calls fn against whichever node is leader, retrying on errors that
// mean "not here" or "unknown outcome" until limit passes.
func onLeader[T any](t testing.TB, c *procCluster, limit time.Duration, fn func(context.Context, pb.LeaseholdClient) (T, error)) T {
	t.Helper()
	deadline := time.Now().Add(limit)
	var last error
	for time.Now().Before(deadline) {
		node := c.waitLeader(time.Until(deadline))
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		v, err := fn(ctx, pb.NewLeaseholdClient(node.conn))
		cancel()
		if err == nil {
			return v
		}
		last = err
		if !retryable(err) {
			t.Fatalf("on leader %s: %v", node.id, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("no leader answered within %v: %v", limit, last)
	var zero T
	return zero
}

// retryable reports whether err means "ask the leader" or "outcome unknown":
// the cases a client retries with the same request.
func retryable(err error) bool {
	err = transport.FromStatus(err)
	return errors.Is(err, transport.ErrNotLeader) || errors.Is(err, transport.ErrUnknownOutcome)
}

// waitHealthy waits until every running node names the same leader.
func (c *procCluster) waitHealthy(limit time.Duration) {
	c.t.Helper()
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		leaders := map[string]bool{}
		ok := true
		for _, node := range c.nodes {
			if node.cmd == nil {
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			st, err := pb.NewLeaseholdClient(node.conn).Status(ctx, &pb.StatusRequest{})
			cancel()
			if err != nil || st.LeaderId == "" {
				ok = false
				break
			}
			leaders[st.LeaderId] = true
		}
		if ok && len(leaders) == 1 {
			return
		}
		time.Sleep(50 * time.Millisecond) // polling a condition, bounded by the deadline
	}
	c.t.Fatalf("cluster not healthy within %v", limit)
}
