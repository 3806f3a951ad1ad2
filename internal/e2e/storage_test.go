package e2e

import (
	"bytes"
	"context"
	endian "encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

// followerOf returns a running node of c that is not the leader.
func followerOf(t *testing.T, c *procCluster) *procNode {
	t.Helper()
	leader := c.waitLeader(30 * time.Second)
	for _, n := range c.nodes {
		if n != leader && n.cmd != nil {
			return n
		}
	}
	t.Fatal("no follower")
	return nil
}

// startAndWaitExit starts node and waits for it to exit by itself, and
// returns its exit code and what it wrote to its log in this run.
func startAndWaitExit(t *testing.T, c *procCluster, node *procNode) (int, string) {
	t.Helper()
	before := int64(0)
	if st, err := os.Stat(node.log); err == nil {
		before = st.Size()
	}
	c.start(node)
	select {
	case <-node.exited:
	case <-time.After(60 * time.Second):
		t.Fatalf("%s still running after 60s; want it to refuse to start", node.id)
	}
	code := node.cmd.ProcessState.ExitCode()
	node.cmd = nil
	b, err := os.ReadFile(node.log)
	if err != nil {
		t.Fatal(err)
	}
	return code, string(b[before:])
}

// checkOneLineExit checks that a serve run that refused to start exited
// with status 1 and a last line that names path and says what to do, with
// no panic or stack trace anywhere in its output.
func checkOneLineExit(t *testing.T, code int, out, path string, says ...string) {
	t.Helper()
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	last := lines[len(lines)-1]
	t.Logf("last line: %s", last)
	if code != 1 {
		t.Errorf("exit code %d, want 1", code)
	}
	if !strings.HasPrefix(last, "leasehold serve: "+path+": ") {
		t.Errorf("last line %q does not start with %q", last, "leasehold serve: "+path+": ")
	}
	for _, s := range says {
		if !strings.Contains(last, s) {
			t.Errorf("last line does not say %q", s)
		}
	}
	for _, bad := range []string{"panic", "goroutine ", ".go:"} {
		if strings.Contains(out, bad) {
			t.Errorf("output contains %q (a panic or stack trace):\n%s", bad, out)
		}
	}
}

// TestCorruptRaftDBExitsWithOneLine: a serve process whose raft.db has a
// corrupt freelist page panicked inside bbolt with a stack trace (issue
// 13). It exits with status 1 and one line naming the file, what is wrong
// and what to do.
func TestCorruptRaftDBExitsWithOneLine(t *testing.T) {
	c := startCluster(t, 3)
	onLeader(t, c, 30*time.Second, func(ctx context.Context, lc pb.LeaseholdClient) (*pb.SetLimitResponse, error) {
		return lc.SetLimit(ctx, &pb.SetLimitRequest{Key: "k", Limit: slowBucket(5)})
	})
	node := followerOf(t, c)
	c.stop(node)
	path := filepath.Join(node.data, "raft.db")
	db, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// The freelist page of the newer meta page, marked as a leaf.
	le := endian.LittleEndian
	size := int(le.Uint32(db[24:]))
	var txid, freelist uint64
	for i := range 2 {
		m := db[i*size+16:]
		if le.Uint32(m) == 0xED0CDAED && le.Uint64(m[48:]) >= txid {
			txid, freelist = le.Uint64(m[48:]), le.Uint64(m[32:])
		}
	}
	le.PutUint16(db[int(freelist)*size+8:], 0x02)
	if err := os.WriteFile(path, db, 0o600); err != nil {
		t.Fatal(err)
	}
	code, out := startAndWaitExit(t, c, node)
	checkOneLineExit(t, code, out, path, "is corrupt", "invalid freelist page", "restore it from a backup", "--replace")
}

// TestDeletedDataDirExitsAndReplaces: a serve process whose data directory
// was deleted restarted silently, bootstrapped again and rejoined with its
// term and vote gone (issue 13). It exits with one line saying its peers
// already form a cluster; started with --replace it joins them without
// bootstrapping and catches up.
func TestDeletedDataDirExitsAndReplaces(t *testing.T) {
	c := startCluster(t, 3)
	onLeader(t, c, 30*time.Second, func(ctx context.Context, lc pb.LeaseholdClient) (*pb.SetLimitResponse, error) {
		return lc.SetLimit(ctx, &pb.SetLimitRequest{Key: "k", Limit: slowBucket(5)})
	})
	node := followerOf(t, c)
	c.kill(node)
	if err := os.RemoveAll(node.data); err != nil {
		t.Fatal(err)
	}
	code, out := startAndWaitExit(t, c, node)
	checkOneLineExit(t, code, out, node.data, "peers already form a cluster", "--replace")
	if bytes.Contains([]byte(out), []byte("bootstrapped a new cluster")) {
		t.Error("the node bootstrapped again")
	}

	// As a fresh replacement: the same command line as the harness's, and
	// --replace.
	f, err := os.OpenFile(node.log, os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd := exec.Command(binary, "serve", "--id", node.id, "--data", node.data, "--grpc-addr", node.grpcAddr,
		"--raft-addr", node.raftAddr, "--peers", c.peers, "--log-level", "debug", "--replace")
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	node.cmd, node.exited = cmd, make(chan struct{})
	go func(exited chan struct{}) {
		_ = cmd.Wait()
		close(exited)
	}(node.exited)

	deadline := time.Now().Add(60 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		st, err := pb.NewLeaseholdClient(node.conn).Status(ctx, &pb.StatusRequest{})
		cancel()
		if err == nil && st.GetKeys() == 1 && len(st.GetServers()) == 3 && st.GetLeaderId() != "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the replacement did not catch up within 60s: %v, %v", st, err)
		}
		time.Sleep(50 * time.Millisecond) // polling a condition, bounded by the deadline
	}
}
