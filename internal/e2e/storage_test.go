package e2e

import (
	"bytes"
	"context"
	endian "encoding/binary"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/leasehold/leasehold/internal/proc"
	"github.com/leasehold/leasehold/internal/proc/proctest"
	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

// followerOf returns a running node of c that is not the leader.
func followerOf(t *testing.T, c *procCluster) *proc.Node {
	t.Helper()
	leader := c.waitLeader(30 * time.Second)
	for _, n := range c.Nodes() {
		if n != leader && n.Running() {
			return n
		}
	}
	t.Fatal("no follower")
	return nil
}

// startAndWaitExit runs node's serve command line once more, as a process
// of its own that may exit (the cluster counts an exit of the node's own
// process as a crash), waits for it to exit by itself, and returns its exit
// code and what it wrote to the node's log in this run.
func startAndWaitExit(t *testing.T, node *proc.Node) (int, string) {
	t.Helper()
	before := int64(0)
	if st, err := os.Stat(node.LogPath()); err == nil {
		before = st.Size()
	}
	p := proc.New(node.ID()+"-refused", proctest.Binary(t), node.Spec().Args(),
		proc.Options{Log: node.LogPath(), MayFinish: true})
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Kill() })
	select {
	case <-p.Exited():
	case <-time.After(60 * time.Second):
		t.Fatalf("%s still running after 60s; want it to refuse to start", node.ID())
	}
	exit, _ := p.LastExit()
	code := 0
	var ee *exec.ExitError
	if errors.As(exit.Err, &ee) {
		code = ee.ExitCode()
	}
	b, err := os.ReadFile(node.LogPath())
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
	var lines []string // the process's own, without the harness's "--- " lines
	for _, l := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
		if !strings.HasPrefix(l, "--- ") {
			lines = append(lines, l)
		}
	}
	if len(lines) == 0 {
		t.Fatalf("the process wrote nothing:\n%s", out)
	}
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
	path := filepath.Join(node.Spec().Data, "raft.db")
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
	code, out := startAndWaitExit(t, node)
	checkOneLineExit(t, code, out, path, "is corrupt", "invalid freelist page", "do not restore an older copy", "--replace")
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
	if err := os.RemoveAll(node.Spec().Data); err != nil {
		t.Fatal(err)
	}
	code, out := startAndWaitExit(t, node)
	checkOneLineExit(t, code, out, node.Spec().Data, "peers already form a cluster", "--replace")
	if bytes.Contains([]byte(out), []byte("bootstrapped a new cluster")) {
		t.Error("the node bootstrapped again")
	}

	// As a fresh replacement: the same command line as the harness's, and
	// --replace.
	p := proc.New(node.ID()+"-replacement", proctest.Binary(t), append(node.Spec().Args(), "--replace"),
		proc.Options{Log: node.LogPath()})
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Kill() })

	deadline := time.Now().Add(60 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		st, err := node.Status(ctx)
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
