package cluster

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/leasehold/leasehold/fsm"
	"github.com/leasehold/leasehold/internal/pki"
	"github.com/leasehold/leasehold/internal/pki/pkitest"
	"github.com/leasehold/leasehold/internal/testlog"
)

// withTLS gives every node a node certificate of d's CA.
func withTLS(d *pkitest.Dir) func(*Config) {
	return func(c *Config) { c.TLS = d.Source(pkitest.Node(c.ID)) }
}

// withProductionTimings keeps the defaults' election timeouts, so that a
// busy test machine does not start elections an attack test would mistake
// for the attack's.
func withProductionTimings(c *Config) {
	d := DefaultConfig()
	c.HeartbeatTimeout, c.ElectionTimeout = d.HeartbeatTimeout, d.ElectionTimeout
	c.LeaderLeaseTimeout, c.CommitTimeout = d.LeaderLeaseTimeout, d.CommitTimeout
}

// attacker is a Raft peer built from hashicorp/raft's own NetworkTransport,
// dialing plain TCP (cfg nil) or TLS with cfg, claiming to be claim.
type attacker struct {
	t     *testing.T
	trans *raft.NetworkTransport
	claim string
}

func newAttacker(t *testing.T, cfg *tls.Config, claim string) *attacker {
	t.Helper()
	var trans *raft.NetworkTransport
	if cfg == nil {
		var err error
		trans, err = raft.NewTCPTransport("127.0.0.1:0", nil, 1, 5*time.Second, io.Discard)
		if err != nil {
			t.Fatal(err)
		}
	} else {
		trans = raft.NewNetworkTransport(newTLSDialer(cfg), 1, 5*time.Second, io.Discard)
	}
	t.Cleanup(func() { trans.Close() })
	return &attacker{t: t, trans: trans, claim: claim}
}

func (a *attacker) header() raft.RPCHeader {
	return raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte(a.claim), Addr: []byte(a.trans.LocalAddr())}
}

// raftStat reads one of n's raft.Stats as a number.
func raftStat(t *testing.T, n *Node, key string) uint64 {
	t.Helper()
	v, err := strconv.ParseUint(n.raft.Stats()[key], 10, 64)
	if err != nil {
		t.Fatalf("raft stat %s: %v", key, err)
	}
	return v
}

// hasLimit reports whether n's machine holds a limit for key.
func hasLimit(n *Node, key string) bool {
	var ok bool
	n.fsm.read(func(m *fsm.Machine) { _, _, ok = m.Lookup(key) })
	return ok
}

// attackResult is what each forged RPC got, and what the victim looked
// like after all three.
type attackResult struct {
	appendErr, timeoutErr, voteErr error
	appendOK, voteGranted          bool
	limitKept                      bool
	termAfter, termBefore          uint64
	victimLed                      bool
}

// attack sends a victim follower the issue's three forged RPCs: an
// AppendEntries whose one entry deletes key and commits it, a TimeoutNow,
// and a RequestVote for a term 1000 ahead, flagged as a leadership transfer
// so that a node with a leader hears it.
func (a *attacker) attack(c *testCluster, victim *Node, key string) attackResult {
	t := a.t
	t.Helper()
	target := raft.ServerAddress(victim.RaftAddr())
	id := raft.ServerID(victim.ID())
	var r attackResult
	r.termBefore = raftStat(t, victim, "term")
	last, lastTerm := raftStat(t, victim, "last_log_index"), raftStat(t, victim, "last_log_term")
	entry := &raft.Log{Index: last + 1, Term: r.termBefore, Type: raft.LogCommand,
		Data: encodeEntry(victim.fsm.now()+1, []fsm.Command{&fsm.DeleteLimit{Key: key}})}
	var aresp raft.AppendEntriesResponse
	r.appendErr = a.trans.AppendEntries(id, target, &raft.AppendEntriesRequest{
		RPCHeader: a.header(), Term: r.termBefore, PrevLogEntry: last, PrevLogTerm: lastTerm,
		Entries: []*raft.Log{entry}, LeaderCommitIndex: last + 1,
	}, &aresp)
	r.appendOK = r.appendErr == nil && aresp.Success
	if r.appendOK {
		// Apply is asynchronous; wait for the entry to reach the machine.
		waitFor(t, opWait, "the forged entry applied", func() bool { return !hasLimit(victim, key) })
	}
	r.limitKept = hasLimit(victim, key)

	r.timeoutErr = a.trans.TimeoutNow(id, target, &raft.TimeoutNowRequest{RPCHeader: a.header()}, &raft.TimeoutNowResponse{})
	if r.timeoutErr == nil {
		waitFor(t, electionWait, "the victim to lead after TimeoutNow", victim.IsLeader)
	}
	r.victimLed = victim.IsLeader()

	var vresp raft.RequestVoteResponse
	r.voteErr = a.trans.RequestVote(id, target, &raft.RequestVoteRequest{
		RPCHeader: a.header(), Term: r.termBefore + 1000, LastLogIndex: last + 1000, LastLogTerm: r.termBefore + 1000,
		LeadershipTransfer: true,
	}, &vresp)
	r.voteGranted = r.voteErr == nil && vresp.Granted
	r.termAfter = raftStat(t, victim, "term")
	return r
}

// TestRaftAttackSucceedsWithoutTLS is the issue's attack on a cluster
// without TLS, kept to show that the attack below is a real one: one forged
// AppendEntries to a follower is accepted and deletes a limit, and one
// anonymous TimeoutNow makes the follower leader.
func TestRaftAttackSucceedsWithoutTLS(t *testing.T) {
	c := newTestCluster(t, 3, withProductionTimings)
	c.setLimit("k", hourly(5))
	victim := c.followers(c.leader())[0]
	waitFor(t, opWait, "the limit on the victim", func() bool { return hasLimit(victim, "k") })
	claim := c.followers(c.leader())[1].ID() // a real member: raft refuses votes for others
	r := newAttacker(t, nil, claim).attack(c, victim, "k")
	if !r.appendOK || r.limitKept {
		t.Errorf("forged AppendEntries: err %v, success %v, limit kept %v; want it accepted and the limit deleted",
			r.appendErr, r.appendOK, r.limitKept)
	}
	if r.timeoutErr != nil || !r.victimLed {
		t.Errorf("forged TimeoutNow: err %v, victim led %v; want the victim made leader", r.timeoutErr, r.victimLed)
	}
	if r.voteErr != nil || r.termAfter < r.termBefore+1000 {
		t.Errorf("forged RequestVote: err %v, term %d -> %d; want the term pushed 1000 ahead", r.voteErr, r.termBefore, r.termAfter)
	}
}

// checkRepelled fails unless every forged RPC failed and the victim kept its
// limit, did not lead and did not take the forged term.
func checkRepelled(t *testing.T, r attackResult, wantErr string) {
	t.Helper()
	for name, err := range map[string]error{"AppendEntries": r.appendErr, "TimeoutNow": r.timeoutErr, "RequestVote": r.voteErr} {
		if err == nil {
			t.Errorf("forged %s succeeded", name)
		} else if wantErr != "" && !strings.Contains(err.Error(), wantErr) {
			t.Errorf("forged %s: %v; want an error containing %q", name, err, wantErr)
		}
	}
	if !r.limitKept || r.appendOK {
		t.Error("the forged AppendEntries deleted the limit")
	}
	if r.victimLed {
		t.Error("the victim leads after the forged TimeoutNow")
	}
	if r.termAfter >= r.termBefore+1000 || r.voteGranted {
		t.Errorf("the victim's term went %d -> %d after the forged RequestVote", r.termBefore, r.termAfter)
	}
}

// TestRaftAttackRefusedWithTLS: the same attack against a TLS cluster fails
// at the connection, whatever the attacker presents that is not the node it
// claims to be: nothing (plain TCP), a client's or an operator's certificate
// of the cluster's CA, a node certificate of another CA. A node certificate
// of the cluster's CA for another id than the one claimed connects, but
// every request is refused before raft sees it. The victim's state does not
// change.
func TestRaftAttackRefusedWithTLS(t *testing.T) {
	d := pkitest.New(t)
	logs := &testlog.Buffer{}
	c := newTestCluster(t, 3, withTLS(d), withProductionTimings, func(cfg *Config) {
		cfg.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelWarn}))
	})
	c.setLimit("k", hourly(5))
	victim := c.followers(c.leader())[0]
	waitFor(t, opWait, "the limit on the victim", func() bool { return hasLimit(victim, "k") })
	claim := c.followers(c.leader())[1].ID() // a real member

	cfgOf := func(d *pkitest.Dir, id pki.Identity) *tls.Config { return d.Source(id).ClientConfig(false, nil) }
	for _, tc := range []struct {
		name    string
		cfg     *tls.Config
		wantErr string
	}{
		{"plain TCP", nil, ""},
		{"client certificate", cfgOf(d, pkitest.Client("app")), ""},
		{"operator certificate", cfgOf(d, pkitest.Operator("alice")), ""},
		{"node certificate of another CA", cfgOf(pkitest.New(t), pkitest.Node(claim)), ""},
		{"node certificate naming another node", cfgOf(d, pkitest.Node("n9")), `certificate names node "n9"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newAttacker(t, tc.cfg, claim).attack(c, victim, "k")
			checkRepelled(t, r, tc.wantErr)
		})
	}
	if !strings.Contains(logs.String(), "raft: refused a request whose sender does not match its certificate") ||
		!strings.Contains(logs.String(), "raft: refused a connection") {
		t.Errorf("the refusals were not logged:\n%s", logs.String())
	}
	// The cluster still works.
	if resp := c.acquire(take("client", 1, "k", 1, 0)); !resp.GetAllowed() {
		t.Fatalf("acquire after the attack = %v; want allowed", resp)
	}
}

// TestClusterOverTLSWithDialAddrs: a TLS cluster whose nodes reach each
// other through forwarders (the chaos harness's proxies) still commits: the
// peer is checked by the node id it must have, not by the address dialed.
func TestClusterOverTLSWithDialAddrs(t *testing.T) {
	d := pkitest.New(t)
	c := newTestCluster(t, 3, withTLS(d), func(cfg *Config) {
		cfg.DialAddrs = map[string]string{}
		for _, p := range cfg.Peers {
			if p.ID != cfg.ID {
				cfg.DialAddrs[p.ID] = newForwarder(t, p.RaftAddr).addr
			}
		}
	})
	c.setLimit("k", hourly(10))
	if resp := c.acquire(take("client", 1, "k", 1, 0)); !resp.GetAllowed() {
		t.Fatalf("acquire = %v; want allowed", resp)
	}
}

// TestRaftDialRefusesPeerWithAnotherID: a node that dials node n2 and
// reaches a node whose certificate names n3 (a wrong address, a hijacked
// name) refuses the connection.
func TestRaftDialRefusesPeerWithAnotherID(t *testing.T) {
	d := pkitest.New(t)
	c := newTestCluster(t, 3, withTLS(d))
	c.leader()
	n1, n3 := c.nodes[0], c.nodes[2]
	err := n1.trans.RequestVote("n2", raft.ServerAddress(n3.RaftAddr()+targetSep+"n2"),
		&raft.RequestVoteRequest{RPCHeader: raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte("n1")}},
		&raft.RequestVoteResponse{})
	if err == nil || !strings.Contains(err.Error(), "want node/n2") {
		t.Fatalf("dialing n2 at n3's address: %v; want the peer refused as not node/n2", err)
	}
}

func TestValidateChecksTheTLSIdentity(t *testing.T) {
	d := pkitest.New(t)
	for _, tc := range []struct {
		name string
		src  *pki.Source
		want string
	}{
		{"another node", d.Source(pkitest.Node("n2")), `names node "n2" but ID is "n1"`},
		{"not a node", d.Source(pkitest.Operator("n1")), "needs a node certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.ID, cfg.Dir, cfg.RaftAddr = "n1", t.TempDir(), "127.0.0.1:7201"
			cfg.Peers = []Peer{{ID: "n1", RaftAddr: "127.0.0.1:7201"}}
			cfg.TLS = tc.src
			if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate() = %v; want %q", err, tc.want)
			}
		})
	}
}

// TestRaftTLSRefusesOldVersionsAndSilentPeers: a TLS 1.1 client is refused;
// a peer that connects and says nothing holds neither the accept loop (a
// real handshake right after succeeds) nor its connection past the
// handshake timeout.
func TestRaftTLSRefusesOldVersionsAndSilentPeers(t *testing.T) {
	d := pkitest.New(t)
	c := newTestCluster(t, 1, withTLS(d))
	addr := c.leader().RaftAddr()
	cfg := d.Source(pkitest.Node("n9")).ClientConfig(false, nil)

	old := cfg.Clone()
	old.MinVersion, old.MaxVersion = tls.VersionTLS10, tls.VersionTLS11
	if conn, err := tls.Dial("tcp", addr, old); err == nil {
		conn.Close()
		t.Fatal("a TLS 1.1 handshake succeeded")
	}

	var silent []net.Conn
	defer func() {
		for _, s := range silent {
			s.Close()
		}
	}()
	for range 8 {
		s, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		silent = append(silent, s)
	}
	start := time.Now()
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		t.Fatalf("a handshake behind silent connections: %v", err)
	}
	conn.Close()
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("a handshake behind silent connections took %v", d)
	}
	var wg sync.WaitGroup
	for _, s := range silent {
		wg.Go(func() {
			s.SetReadDeadline(time.Now().Add(peerHandshakeTimeout + 10*time.Second))
			_, err := s.Read(make([]byte, 1))
			if errors.Is(err, os.ErrDeadlineExceeded) {
				t.Errorf("a silent connection was still open %v after its handshake began", peerHandshakeTimeout+10*time.Second)
			}
		})
	}
	wg.Wait()
}

// TestRaftTLSPicksUpRotation: after a node's certificate files are
// replaced, new connections get the new certificate; after the CA file
// gains a new CA, a node certificate of the new CA is accepted.
func TestRaftTLSPicksUpRotation(t *testing.T) {
	d := pkitest.New(t)
	c := newTestCluster(t, 3, withTLS(d))
	victim := c.followers(c.leader())[0]
	serial := func() string {
		cfg := d.Source(pkitest.Node("n9")).ClientConfig(false, nil)
		conn, err := tls.Dial("tcp", victim.RaftAddr(), cfg)
		if err != nil {
			t.Fatalf("dial %s: %v", victim.ID(), err)
		}
		defer conn.Close()
		return conn.ConnectionState().PeerCertificates[0].SerialNumber.String()
	}
	before := serial()
	d.Issue(pkitest.Node(victim.ID())) // rotate in place
	if after := serial(); after == before {
		t.Fatalf("the node presents serial %s after the rotation too", after)
	}

	next := pkitest.New(t)
	nf := next.Issue(pkitest.Node("n9"))
	bundle := append(append([]byte{}, d.CA.CertPEM()...), next.CA.CertPEM()...)
	bundleFile := next.Path + "/bundle.pem"
	if err := pki.WriteFile(bundleFile, bundle, 0o644); err != nil {
		t.Fatal(err)
	}
	src, err := pki.NewSource(nf.Cert, nf.Key, bundleFile, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	handshake := func() error {
		conn, err := tls.Dial("tcp", victim.RaftAddr(), src.ClientConfig(false, nil))
		if err != nil {
			return err
		}
		defer conn.Close()
		// TLS 1.3: the server's verdict on our certificate comes after.
		conn.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		_, err = conn.Read(make([]byte, 1))
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return nil // accepted: the node waits for a request
		}
		return err
	}
	if err := handshake(); err == nil {
		t.Fatal("a node certificate of an untrusted CA was accepted")
	}
	if err := pki.WriteFile(d.CAFile, bundle, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := handshake(); err != nil {
		t.Fatalf("after the CA bundle changed, the new CA's certificate was refused: %v", err)
	}
	// The cluster, whose every node reads the rewritten bundle, still works.
	c.setLimit("k", hourly(10))
}

// tlsDialer is a raft.StreamLayer that dials TLS and accepts nothing: the
// attacker's, and a test peer's.
type tlsDialer struct {
	cfg    *tls.Config
	closed chan struct{}
	once   sync.Once
}

func newTLSDialer(cfg *tls.Config) *tlsDialer {
	return &tlsDialer{cfg: cfg, closed: make(chan struct{})}
}

func (d *tlsDialer) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	return tls.DialWithDialer(&net.Dialer{Timeout: timeout}, "tcp", string(addr), d.cfg)
}

func (d *tlsDialer) Accept() (net.Conn, error) {
	<-d.closed
	return nil, errClosed
}

func (d *tlsDialer) Close() error {
	d.once.Do(func() { close(d.closed) })
	return nil
}

func (d *tlsDialer) Addr() net.Addr { return tcpAddr("127.0.0.1:1") }

// BenchmarkClusterAcquireTLS is BenchmarkClusterAcquire with Raft in plain
// TCP and over mutual TLS, side by side: what TLS costs the replication of
// the write path (no gRPC here).
//
//	go test -run '^$' -bench BenchmarkClusterAcquireTLS -benchtime 3s -count 4 ./cluster/
func BenchmarkClusterAcquireTLS(b *testing.B) {
	for _, workers := range []int{1, 1024} {
		for _, on := range []bool{false, true} {
			b.Run(fmt.Sprintf("workers=%d/tls=%v", workers, on), func(b *testing.B) {
				if !on {
					benchClusterAcquire(b, workers)
					return
				}
				benchClusterAcquire(b, workers, withTLS(pkitest.New(b)))
			})
		}
	}
}

// TestSilentConnectionsDoNotLockPeersOut: anyone who reaches the Raft port
// can connect without a certificate; 64 connections that said nothing held
// every handshake slot for 5 s and every peer's new connection was closed
// at once (on real processes: a node certificate's handshake got EOF while
// 64 silent connections were open), so an outsider re-opening 64
// connections every 5 s could keep a new leader from reaching anyone. Now
// a new connection displaces the oldest one still in its handshake.
func TestSilentConnectionsDoNotLockPeersOut(t *testing.T) {
	d := pkitest.New(t)
	c := newTestCluster(t, 1, withTLS(d))
	addr := c.leader().RaftAddr()
	var silent []net.Conn
	defer func() {
		for _, s := range silent {
			s.Close()
		}
	}()
	// The accept loop takes connections in order: all of these are in
	// their handshake before the peer's below is accepted, and stay there
	// for peerHandshakeTimeout.
	for range maxPeerHandshakes {
		s, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		silent = append(silent, s)
	}
	cfg := d.Source(pkitest.Node("n9")).ClientConfig(false, nil)
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		t.Fatalf("a peer's handshake behind %d silent connections: %v", maxPeerHandshakes, err)
	}
	conn.Close()
	// The oldest silent connection made room: closed at once, not at its
	// handshake timeout.
	silent[0].SetReadDeadline(time.Now().Add(peerHandshakeTimeout / 2))
	if _, err := silent[0].Read(make([]byte, 1)); errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("the oldest silent connection was not closed to make room")
	}
}
