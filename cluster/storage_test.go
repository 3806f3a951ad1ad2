package cluster

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"

	"github.com/leasehold/leasehold/fsm"
	"github.com/leasehold/leasehold/internal/pki/pkitest"
	"github.com/leasehold/leasehold/internal/testlog"
)

// oneNodeDir runs a one-node cluster in a new directory, applies a few
// writes and, with compact, takes a snapshot that leaves only the last log
// entries; then it closes the node and returns its config, to open again.
func oneNodeDir(t *testing.T, compact bool) Config {
	t.Helper()
	watchdog(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.ID, cfg.Dir, cfg.RaftAddr = "n1", filepath.Join(t.TempDir(), "n1"), ln.Addr().String()
	cfg.Peers = []Peer{{ID: "n1", RaftAddr: cfg.RaftAddr}}
	cfg.Logger = testLogger(t)
	testTimings(&cfg)
	cfg.TrailingLogs = 2 // a snapshot leaves only the last 2 entries
	cfg.Listener = ln
	n, err := Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	c := &testCluster{t: t, cfgs: []Config{cfg}, nodes: []*Node{n}}
	c.leader()
	for i := range 8 {
		c.setLimit("k"+string(rune('a'+i)), hourly(10))
	}
	if compact {
		if err := n.raft.Snapshot().Error(); err != nil {
			t.Fatalf("snapshot: %v", err)
		}
		if first, _ := n.logs.FirstIndex(); first <= 1 {
			t.Fatalf("log starts at %d after a snapshot: not compacted", first)
		}
	}
	c.stop(0, false)
	cfg.Listener = nil
	return cfg
}

// openAgain opens cfg's node on a new listener, as a restart would, and
// closes it when the test ends.
func openAgain(t *testing.T, cfg Config) (*Node, error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg.Listener = ln
	n, err := Open(context.Background(), cfg)
	if err == nil {
		t.Cleanup(func() { n.Close(context.Background()) })
	}
	return n, err
}

// wantStateError checks that err is a one-line *StateError of kind, about
// path, whose message contains each of says.
func wantStateError(t *testing.T, err error, kind error, path string, says ...string) {
	t.Helper()
	var se *StateError
	if !errors.As(err, &se) || !errors.Is(err, kind) {
		t.Fatalf("err = %v (%T); want a *StateError of kind %v", err, err, kind)
	}
	if se.Path != path {
		t.Errorf("StateError.Path = %q, want %q", se.Path, path)
	}
	msg := err.Error()
	if strings.Contains(msg, "\n") || se.Remedy == "" {
		t.Errorf("message %q: want one line with a remedy", msg)
	}
	for _, s := range says {
		if !strings.Contains(msg, s) {
			t.Errorf("message %q does not say %q", msg, s)
		}
	}
	t.Logf("%v", err)
}

// boltMeta reads the newer valid meta page of a bbolt file: the page size,
// the root bucket's page and the freelist's page.
func boltMeta(t *testing.T, db []byte) (pageSize int, root, freelist uint64) {
	t.Helper()
	le := binary.LittleEndian
	pageSize = int(le.Uint32(db[24:]))
	var txid uint64
	for i := range 2 {
		m := db[i*pageSize+16:]
		if le.Uint32(m) != 0xED0CDAED {
			continue
		}
		if id := le.Uint64(m[48:]); id >= txid {
			txid, root, freelist = id, le.Uint64(m[16:]), le.Uint64(m[32:])
		}
	}
	if root == 0 || freelist == 0 {
		t.Fatalf("no valid meta page in the bbolt file")
	}
	return pageSize, root, freelist
}

// corruptStore changes raft.db under cfg.Dir with edit.
func corruptStore(t *testing.T, cfg Config, edit func(db []byte)) string {
	t.Helper()
	path := filepath.Join(cfg.Dir, storeFile)
	db, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	edit(db)
	if err := os.WriteFile(path, db, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestCorruptRaftDBIsAnErrorNotAPanic: a corrupted raft.db made the node
// panic inside bbolt ("invalid freelist page", "Page expected to be: 256,
// but self identifies as ...") with a stack trace (issue 13). Open now
// returns a one-line *StateError naming the file, what is wrong and what to
// do.
func TestCorruptRaftDBIsAnErrorNotAPanic(t *testing.T) {
	t.Run("invalid freelist page", func(t *testing.T) {
		cfg := oneNodeDir(t, false)
		path := corruptStore(t, cfg, func(db []byte) {
			size, _, freelist := boltMeta(t, db)
			binary.LittleEndian.PutUint16(db[int(freelist)*size+8:], 0x02) // a leaf, not a freelist
		})
		_, err := openAgain(t, cfg)
		wantStateError(t, err, ErrCorruptState, path, "invalid freelist page", "do not restore an older copy", "fresh replacement")
	})
	t.Run("page that names another page", func(t *testing.T) {
		cfg := oneNodeDir(t, false)
		path := corruptStore(t, cfg, func(db []byte) {
			size, root, _ := boltMeta(t, db)
			binary.LittleEndian.PutUint64(db[int(root)*size:], root+1000)
		})
		_, err := openAgain(t, cfg)
		wantStateError(t, err, ErrCorruptState, path, "Page expected to be", "do not restore an older copy")
	})
}

// TestBothMetaPagesOverwrittenIsNotALock: a raft.db whose two meta pages
// were overwritten was reported as "is another node using this dir?"
// (issue 13). It is a corrupt file; a lock held by another process is
// reported as that.
func TestBothMetaPagesOverwrittenIsNotALock(t *testing.T) {
	cfg := oneNodeDir(t, false)
	path := corruptStore(t, cfg, func(db []byte) {
		size, _, _ := boltMeta(t, db)
		copy(db[:2*size], bytes.Repeat([]byte("garbage!"), size/4))
	})
	_, err := openAgain(t, cfg)
	wantStateError(t, err, ErrCorruptState, path, "not a readable bbolt file", "invalid database")
	if errors.Is(err, ErrStoreLocked) || strings.Contains(err.Error(), "another") {
		t.Errorf("a corrupt file reported as a lock: %v", err)
	}

	// The lock: a second node on a directory in use.
	cfg = oneNodeDir(t, false)
	if _, err := openAgain(t, cfg); err != nil {
		t.Fatal(err)
	}
	_, err = openAgain(t, cfg)
	wantStateError(t, err, ErrStoreLocked, filepath.Join(cfg.Dir, storeFile), "locked by another process")
}

// TestDeletedSnapshotDirIsAnErrorNotAPanic: deleting the snapshot directory
// of a node whose log was compacted led to "panic: log not found" in
// raft.NewRaft (issue 13). Open checks that the log starts where the newest
// snapshot ends, and says what is missing.
func TestDeletedSnapshotDirIsAnErrorNotAPanic(t *testing.T) {
	cfg := oneNodeDir(t, true)
	snapshots := filepath.Join(cfg.Dir, snapshotDir)
	if err := os.RemoveAll(snapshots); err != nil {
		t.Fatal(err)
	}
	_, err := openAgain(t, cfg)
	wantStateError(t, err, ErrCorruptState, snapshots, "missing snapshots", "no snapshot", "do not restore an older copy")

	// Without the check, raft panics: guard turns that into an error too.
	err = guard(func() error {
		ln, lerr := net.Listen("tcp", "127.0.0.1:0")
		if lerr != nil {
			return lerr
		}
		c := cfg
		c.Listener = ln
		n := &Node{cfg: c.withDefaults(), log: c.Logger, fsm: newMachineFSM(newActivity(nil), nil)}
		store, _, err := openStore(c.Dir)
		if err != nil {
			return err
		}
		logs, err := openWAL(c.Dir, filepath.Join(c.Dir, walDir), newHCLog(c.Logger, "wal"))
		if err != nil {
			return err
		}
		defer logs.Close()
		snaps, err := raft.NewFileSnapshotStore(c.Dir, 1, os.Stderr)
		if err != nil {
			return err
		}
		trans := raft.NewNetworkTransport(&streamLayer{Listener: ln, advertise: ln.Addr()}, 1, time.Second, os.Stderr)
		defer trans.Close()
		_, err = raft.NewRaft(n.raftConfig(newHCLog(c.Logger, "raft")), n.fsm, logs, store, snaps, trans)
		return err
	})
	if p := (panicked{}); !errors.As(err, &p) || !strings.Contains(p.Error(), "log not found") {
		t.Errorf("raft.NewRaft on the same directory: %v; want the panic the check prevents", err)
	}
}

// TestCorruptSnapshotIsAStateError: a snapshot whose data does not match
// its checksum cannot be restored; raft then fails to start, and Open says
// where and what to do, as for any other damage.
func TestCorruptSnapshotIsAStateError(t *testing.T) {
	cfg := oneNodeDir(t, true)
	states, err := filepath.Glob(filepath.Join(cfg.Dir, snapshotDir, "*", "state.bin"))
	if err != nil || len(states) != 1 {
		t.Fatalf("snapshots: %v, %v; want one", states, err)
	}
	b, err := os.ReadFile(states[0])
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0xff
	if err := os.WriteFile(states[0], b, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = openAgain(t, cfg)
	wantStateError(t, err, ErrCorruptState, cfg.Dir, "failed to load any existing snapshots", "do not restore an older copy")
}

// TestTruncatedRaftDBRefusesToStart: a node whose raft.db was truncated to 0
// bytes restarted silently, bootstrapped again and rejoined with its term
// and vote gone (issue 13). With its log left in the WAL it refuses, even
// as a replacement; with the WAL gone too, its marker file shows it ran
// here: it refuses; as a fresh replacement it starts, empty, without
// bootstrapping.
func TestTruncatedRaftDBRefusesToStart(t *testing.T) {
	cfg := oneNodeDir(t, false)
	path := filepath.Join(cfg.Dir, storeFile)
	if err := os.Truncate(path, 0); err != nil {
		t.Fatal(err)
	}
	for _, replace := range []bool{false, true} {
		cfg.Replace = replace
		_, err := openAgain(t, cfg)
		wantStateError(t, err, ErrStateLost, path, "log entries", "raft.db was lost")
	}
	cfg.Replace = false
	if err := os.RemoveAll(filepath.Join(cfg.Dir, walDir)); err != nil {
		t.Fatal(err)
	}
	_, err := openAgain(t, cfg)
	wantStateError(t, err, ErrStateLost, path, "ran here before", "vote", "--replace")

	cfg.Replace = true
	n, err := openAgain(t, cfg)
	if err != nil {
		t.Fatalf("open as a fresh replacement: %v", err)
	}
	if last := n.raft.LastIndex(); last != 0 {
		t.Errorf("a fresh replacement's log ends at %d; it bootstrapped", last)
	}
}

// TestSnapshotsWithoutRaftDBRefuse: raft.db gone but snapshots left would
// restore the snapshot with term 0 and no vote. Refused, even as a
// replacement: the leftovers must go first.
func TestSnapshotsWithoutRaftDBRefuse(t *testing.T) {
	cfg := oneNodeDir(t, true)
	path := filepath.Join(cfg.Dir, storeFile)
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	for _, replace := range []bool{false, true} {
		cfg.Replace = replace
		_, err := openAgain(t, cfg)
		wantStateError(t, err, ErrStateLost, path, "a snapshot", "raft.db was lost")
	}
}

// TestRefusedStartMakesNothing: a start refused after raft.db was deleted
// made a fresh raft.db (and a wal/ if that was gone too) before it
// refused, so the directory the operator was told about was not the one
// left behind. A refused start leaves the directory as it found it.
func TestRefusedStartMakesNothing(t *testing.T) {
	cfg := oneNodeDir(t, false)
	if err := os.Remove(filepath.Join(cfg.Dir, storeFile)); err != nil {
		t.Fatal(err)
	}
	for _, gone := range []string{"", walDir, snapshotDir} {
		if gone != "" {
			if err := os.RemoveAll(filepath.Join(cfg.Dir, gone)); err != nil {
				t.Fatal(err)
			}
		}
		before := dirNames(t, cfg.Dir)
		_, err := openAgain(t, cfg)
		wantStateError(t, err, ErrStateLost, filepath.Join(cfg.Dir, storeFile))
		if after := dirNames(t, cfg.Dir); !slices.Equal(after, before) {
			t.Errorf("without raft.db (and %q): a refused start left %v; it found %v", gone, after, before)
		}
	}
}

// dirNames returns the names in dir, sorted.
func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// TestStaleSnapshotTempIsRemoved: a kill -9 while a snapshot was written
// left its partial snapshots/*.tmp directory on disk for good (issue 13).
// Open removes it and logs what it removed; complete snapshots stay.
func TestStaleSnapshotTempIsRemoved(t *testing.T) {
	cfg := oneNodeDir(t, true)
	tmp := filepath.Join(cfg.Dir, snapshotDir, "2-40-1700000000000.tmp")
	if err := os.MkdirAll(tmp, 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(tmp, "state.bin"), make([]byte, 4321), 0o600); err != nil {
		t.Fatal(err)
	}
	var logs testlog.Buffer
	cfg.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
	n, err := openAgain(t, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(tmp); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s still there after Open (%v)", tmp, err)
	}
	if got := logs.String(); !strings.Contains(got, "removed a partial snapshot") || !strings.Contains(got, "bytes=4321") ||
		!strings.Contains(got, "2-40-1700000000000.tmp") {
		t.Errorf("log does not name the partial snapshot and its size:\n%s", got)
	}
	_ = n
	entries, err := os.ReadDir(filepath.Join(cfg.Dir, snapshotDir))
	if err != nil || len(entries) == 0 {
		t.Errorf("complete snapshots: %v, %v; want them kept", entries, err)
	}
}

// TestMarkerWrittenForExistingState: a directory with state from a build
// without the marker file gets one when the node starts, so that losing
// raft.db later is noticed.
func TestMarkerWrittenForExistingState(t *testing.T) {
	cfg := oneNodeDir(t, false)
	marker := filepath.Join(cfg.Dir, markerFile)
	if err := os.Remove(marker); err != nil {
		t.Fatalf("no marker after bootstrap: %v", err)
	}
	n, err := openAgain(t, cfg)
	if err != nil {
		t.Fatal(err)
	}
	n.Close(context.Background())
	if _, err := os.Stat(marker); err != nil {
		t.Errorf("marker not written for existing state: %v", err)
	}
}

// TestDeletedDataDirRefusesToRejoin: a node whose data directory was
// deleted restarted silently, bootstrapped the configuration again and
// rejoined with its term and vote gone, free to vote twice in one term
// (issue 13). Its peers' answers to its probe show a cluster exists: it
// refuses. Started as a fresh replacement, it does not bootstrap; the
// leader sends it the log, limits included.
func TestDeletedDataDirRefusesToRejoin(t *testing.T) { deletedDataDirRefusesToRejoin(t) }

// TestDeletedDataDirRefusesToRejoinOverTLS: the same with Raft over mutual
// TLS. The probe dialed plain TCP at first, which a TLS peer cannot answer,
// so the node saw no cluster and bootstrapped again: the probe must dial as
// the node's transport does.
func TestDeletedDataDirRefusesToRejoinOverTLS(t *testing.T) {
	deletedDataDirRefusesToRejoin(t, withTLS(pkitest.New(t)))
}

func deletedDataDirRefusesToRejoin(t *testing.T, opts ...func(*Config)) {
	c := newTestCluster(t, 3, opts...)
	c.setLimit("k", hourly(10))
	leader := c.leader()
	i := (c.index(leader) + 1) % 3
	c.stop(i, true)
	if err := os.RemoveAll(c.cfgs[i].Dir); err != nil {
		t.Fatal(err)
	}
	ln := c.relisten(c.cfgs[i].RaftAddr)
	err := c.open(i, ln)
	wantStateError(t, err, ErrStateLost, c.cfgs[i].Dir, "peers already form a cluster", "term ", "--replace")
	if _, err := os.Stat(c.cfgs[i].Dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the refused start left its data directory behind (%v)", err)
	}

	c.cfgs[i].Replace = true
	c.start(i, nil)
	n := c.nodes[i]
	waitFor(t, opWait, "the replacement to catch up", func() bool {
		l, ok := n.lookup("k")
		return ok && l.Limit == 10 && n.raft.AppliedIndex() >= leader.raft.CommitIndex()
	})
	if cfg := n.raft.GetConfiguration(); cfg.Error() != nil || len(cfg.Configuration().Servers) != 3 {
		t.Errorf("the replacement's configuration: %v", cfg.Configuration())
	}
	// And it stays a member: it restarts from its state, Replace or not.
	c.stop(i, false)
	c.cfgs[i].Replace = false
	c.start(i, nil)
}

// TestNewClusterStartedTogetherBootstraps: nodes of a new cluster opened at
// once (as make cluster, e2e and jepsen start them) each find the others
// empty or just bootstrapped, and bootstrap. A node of a new cluster started
// after the others elected a leader finds a cluster and refuses, and joins
// as a fresh replacement.
func TestNewClusterStartedTogetherBootstraps(t *testing.T) {
	c := newTestCluster(t, 3) // opened at once
	c.leader()
	for _, n := range c.nodes {
		if _, err := os.Stat(filepath.Join(n.cfg.Dir, markerFile)); err != nil {
			t.Errorf("%s: no marker after bootstrap: %v", n.ID(), err)
		}
	}

	// Three more nodes: two start, the third only once they have a leader.
	late := newLateCluster(t)
	if err := late.c.open(0, late.lns[0]); err != nil {
		t.Fatal(err)
	}
	if err := late.c.open(1, late.lns[1]); err != nil {
		t.Fatal(err)
	}
	late.c.leader()
	err := late.c.open(2, late.lns[2])
	wantStateError(t, err, ErrStateLost, late.c.cfgs[2].Dir, "is new and was started after the others elected a leader")
	late.c.cfgs[2].Replace = true
	late.c.start(2, nil)
	late.c.setLimit("k", hourly(3))
	waitFor(t, opWait, "the late node to apply the limit", func() bool {
		_, ok := late.c.nodes[2].lookup("k")
		return ok
	})
}

type lateCluster struct {
	c   *testCluster
	lns []net.Listener
}

// newLateCluster makes the configs of a new 3-node cluster and binds their
// listeners, opening none.
func newLateCluster(t *testing.T) *lateCluster {
	t.Helper()
	lc := &lateCluster{c: &testCluster{t: t, cfgs: make([]Config, 3), nodes: make([]*Node, 3)}}
	peers := make([]Peer, 3)
	for i := range 3 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lc.lns = append(lc.lns, ln)
		peers[i] = Peer{ID: "m" + string(rune('1'+i)), RaftAddr: ln.Addr().String()}
	}
	for i := range 3 {
		cfg := DefaultConfig()
		cfg.ID, cfg.Dir, cfg.RaftAddr, cfg.Peers = peers[i].ID, filepath.Join(t.TempDir(), peers[i].ID), peers[i].RaftAddr, peers
		cfg.Logger = testLogger(t)
		testTimings(&cfg)
		lc.c.cfgs[i] = cfg
	}
	t.Cleanup(func() {
		lc.c.closeAll()
		for i, ln := range lc.lns {
			if lc.c.nodes[i] == nil {
				ln.Close() // never opened, or its Open failed and closed it
			}
		}
	})
	return lc
}

// TestProbeIsBounded: an empty node whose peers do not answer (one accepts
// connections and never replies, one refuses them) bootstraps after about
// ProbeTimeout, not later.
func TestProbeIsBounded(t *testing.T) {
	watchdog(t)
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	var held []net.Conn
	var mu sync.Mutex
	go func() {
		for {
			conn, err := silent.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, conn)
			mu.Unlock()
		}
	}()
	defer func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range held {
			c.Close()
		}
	}()
	refused, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refusedAddr := refused.Addr().String()
	refused.Close()

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.ID, cfg.Dir, cfg.Listener = "n1", t.TempDir(), ln
	cfg.Peers = []Peer{{ID: "n1", RaftAddr: ln.Addr().String()}, {ID: "n2", RaftAddr: silent.Addr().String()},
		{ID: "n3", RaftAddr: refusedAddr}}
	cfg.Logger = testLogger(t)
	testTimings(&cfg)
	cfg.ProbeTimeout = 300 * time.Millisecond
	start := time.Now()
	n, err := Open(context.Background(), cfg)
	took := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close(context.Background())
	if took > 5*cfg.ProbeTimeout {
		t.Errorf("Open took %v with ProbeTimeout %v", took, cfg.ProbeTimeout)
	}
	if n.raft.LastIndex() != 1 {
		t.Errorf("last index %d after Open; want the bootstrap entry", n.raft.LastIndex())
	}
}

// lookup reads key's limit from the node's machine.
func (n *Node) lookup(key string) (l fsm.Limit, ok bool) {
	n.fsm.read(func(m *fsm.Machine) { l, _, ok = m.Lookup(key) })
	return l, ok
}

// TestStableWriteAfterCloseIsDropped: raft's heartbeat fast path can save a
// newer term after the node closed its store, and raft panics on that
// error ("failed to save current term: database not open", a cluster test
// under -race). The store raft writes through drops writes once closing.
func TestStableWriteAfterCloseIsDropped(t *testing.T) {
	store, err := raftboltdb.New(raftboltdb.Options{Path: filepath.Join(t.TempDir(), "raft.db")})
	if err != nil {
		t.Fatal(err)
	}
	s := &raftStable{StableStore: store}
	if err := s.SetUint64([]byte("CurrentTerm"), 3); err != nil {
		t.Fatal(err)
	}
	s.closeWrites()
	if err := store.Close(); err != nil {
		t.Fatal(err)
	}
	if err := store.SetUint64([]byte("CurrentTerm"), 4); err == nil {
		t.Fatal("the closed bbolt store took a write; the test shows nothing")
	}
	if err := s.SetUint64([]byte("CurrentTerm"), 4); err != nil {
		t.Fatalf("SetUint64 after close: %v; want it dropped", err)
	}
	if err := s.Set([]byte("k"), []byte("v")); err != nil {
		t.Fatalf("Set after close: %v; want it dropped", err)
	}
}
