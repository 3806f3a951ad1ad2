package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"math/big"
	"net"
	"net/url"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/leasehold/leasehold/fsm"
	"github.com/leasehold/leasehold/internal/pki"
	"github.com/leasehold/leasehold/internal/pki/pkitest"
	"github.com/leasehold/leasehold/internal/proc"
	"github.com/leasehold/leasehold/internal/proc/proctest"
	"github.com/leasehold/leasehold/transport"
	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

// calmElections gives the nodes election timeouts of 2 s, so that a
// machine busy with the race detector and other tests does not hold an
// election the attack tests would take for the attack's.
func calmElections(l *proc.Layout) {
	l.ExtraArgs = func(proc.NodeSpec) []string {
		return []string{"--heartbeat-timeout", "2s", "--election-timeout", "2s", "--leader-lease-timeout", "1s"}
	}
}

// drainedKey is the key the attacks try to refill: 5 tokens an hour, all
// taken before the attack.
const drainedKey = "drained"

var hourlyFive = &pb.Limit{Algorithm: pb.Algorithm_TOKEN_BUCKET, Limit: 5, PeriodNs: int64(time.Hour), Burst: 5}

// caller makes central acquires as one client id, on whichever node leads.
type caller struct {
	admin *proc.Admin
	id    string
	seq   uint64
}

// dialAs returns an Admin over c's nodes secured as sec says (a
// certificate's TLSFiles, proc.Plaintext, or c.Security(): as the
// cluster's own connections, with its operator certificate or, started
// insecure, in plain text); the test's cleanup closes it.
func dialAs(t *testing.T, c *procCluster, sec proc.Security) *proc.Admin {
	t.Helper()
	a, err := proc.Dial(c.Endpoints(), sec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return a
}

// acquire asks for one token of key (with its limit inline, which a key
// that has a limit ignores) on the leader, within 20 s.
func (cl *caller) acquire(t *testing.T, key string) (*pb.AcquireResponse, error) {
	t.Helper()
	cl.seq++
	req := &pb.AcquireRequest{ClientId: []byte(cl.id), Seq: cl.seq,
		Items: []*pb.AcquireItem{{Key: key, Count: 1, Limit: hourlyFive}}}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	return proc.OnLeader(ctx, cl.admin, func(ctx context.Context, api pb.LeaseholdClient) (*pb.AcquireResponse, error) {
		return api.Acquire(ctx, req)
	})
}

// drain sets drainedKey's limit (as the cluster's operator) and takes its
// five tokens; a sixth is refused.
func drain(t *testing.T, c *procCluster, cl *caller) {
	t.Helper()
	onLeader(t, c, 20*time.Second, func(ctx context.Context, api pb.LeaseholdClient) (*pb.SetLimitResponse, error) {
		return api.SetLimit(ctx, &pb.SetLimitRequest{Key: drainedKey, Limit: hourlyFive})
	})
	for i := range 6 {
		resp, err := cl.acquire(t, drainedKey)
		if err != nil {
			t.Fatal(err)
		}
		if resp.GetAllowed() != (i < 5) {
			t.Fatalf("acquire %d of %s: allowed %v", i+1, drainedKey, resp.GetAllowed())
		}
	}
}

// status asks node for its status within 5 s.
func status(t *testing.T, node *proc.Node) *pb.StatusResponse {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := node.Status(ctx)
	if err != nil {
		t.Fatalf("status of %s: %v", node.ID(), err)
	}
	return st
}

// settledFollower waits until a follower has applied everything the leader
// committed, with no entry in flight, and returns it and its status: its
// last log entry is then its commit index, of the current term.
func settledFollower(t *testing.T, c *procCluster) (*proc.Node, *pb.StatusResponse) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		leader := c.waitLeader(10 * time.Second)
		ls := status(t, leader)
		for _, n := range c.Nodes() {
			if n == leader {
				continue
			}
			st := status(t, n)
			if st.GetNodeState() == pb.NodeState_NODE_STATE_FOLLOWER && st.GetTerm() == ls.GetTerm() && st.GetAppliedIndex() == ls.GetCommitIndex() &&
				st.GetCommitIndex() == ls.GetCommitIndex() {
				return n, st
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("no follower caught up with the leader within 20s")
		}
		time.Sleep(50 * time.Millisecond) // polling nodes, bounded by the deadline
	}
}

// streamLayer is the attacker's raft.StreamLayer: it dials plain TCP (cfg
// nil) or TLS with cfg, and accepts nothing.
type streamLayer struct {
	cfg    *tls.Config
	closed chan struct{}
	once   sync.Once
}

func (s *streamLayer) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	d := &net.Dialer{Timeout: timeout}
	if s.cfg == nil {
		return d.Dial("tcp", string(addr))
	}
	return tls.DialWithDialer(d, "tcp", string(addr), s.cfg)
}

func (s *streamLayer) Accept() (net.Conn, error) {
	<-s.closed
	return nil, net.ErrClosed
}

func (s *streamLayer) Close() error {
	s.once.Do(func() { close(s.closed) })
	return nil
}

func (s *streamLayer) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1} }

// raftAttacker is a Raft peer made of hashicorp/raft's own NetworkTransport
// that claims to be the member claim.
type raftAttacker struct {
	trans *raft.NetworkTransport
	claim string
}

func newRaftAttacker(t *testing.T, cfg *tls.Config, claim string) *raftAttacker {
	t.Helper()
	trans := raft.NewNetworkTransport(&streamLayer{cfg: cfg, closed: make(chan struct{})}, 1, 5*time.Second, io.Discard)
	t.Cleanup(func() { trans.Close() })
	return &raftAttacker{trans: trans, claim: claim}
}

func (a *raftAttacker) header() raft.RPCHeader {
	return raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte(a.claim), Addr: []byte(a.claim)}
}

// appendDelete sends victim, whose status is st, an AppendEntries as its
// leader in its current term: one entry right after its last one (its
// commit index) that deletes key, committed at once. It returns whether
// the victim accepted it.
func (a *raftAttacker) appendDelete(victim *proc.Node, st *pb.StatusResponse, key string) (bool, error) {
	last, term := st.GetCommitIndex(), st.GetTerm()
	entry := &raft.Log{Index: last + 1, Term: term, Type: raft.LogCommand,
		Data: fsm.Encode(nil, st.GetLogTimeNs()+1, &fsm.DeleteLimit{Key: key})}
	var resp raft.AppendEntriesResponse
	err := a.trans.AppendEntries(raft.ServerID(victim.ID()), raft.ServerAddress(victim.RaftAddr()), &raft.AppendEntriesRequest{
		RPCHeader: a.header(), Term: term, PrevLogEntry: last, PrevLogTerm: term,
		Entries: []*raft.Log{entry}, LeaderCommitIndex: last + 1,
	}, &resp)
	return err == nil && resp.Success, err
}

// timeoutNow tells victim to start an election at once.
func (a *raftAttacker) timeoutNow(victim *proc.Node) error {
	return a.trans.TimeoutNow(raft.ServerID(victim.ID()), raft.ServerAddress(victim.RaftAddr()),
		&raft.TimeoutNowRequest{RPCHeader: a.header()}, &raft.TimeoutNowResponse{})
}

// requestVote asks victim for its vote 1000 terms ahead of term, as a
// leadership transfer, so that a follower with a leader hears it.
func (a *raftAttacker) requestVote(victim *proc.Node, term, last uint64) (bool, error) {
	var resp raft.RequestVoteResponse
	err := a.trans.RequestVote(raft.ServerID(victim.ID()), raft.ServerAddress(victim.RaftAddr()), &raft.RequestVoteRequest{
		RPCHeader: a.header(), Term: term + 1000, LastLogIndex: last + 1000, LastLogTerm: term + 1000, LeadershipTransfer: true,
	}, &resp)
	return err == nil && resp.Granted, err
}

// waitStatus polls victim until ok holds for its status, at most limit.
func waitStatus(t *testing.T, victim *proc.Node, limit time.Duration, what string, ok func(*pb.StatusResponse) bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		if st := status(t, victim); ok(st) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v (status %v)", what, limit, status(t, victim))
		}
		time.Sleep(20 * time.Millisecond) // polling a node, bounded by the deadline
	}
}

// TestRaftAttackWorksWithoutTLS is the issue's attack on real serve
// processes started with --insecure, to show that the attacker below is a
// real one: a forged AppendEntries to a follower's Raft port is accepted
// and deletes a drained key's limit there; an anonymous TimeoutNow makes
// that follower leader, and the drained key admits again; a forged
// RequestVote pushes its term 1000 ahead.
func TestRaftAttackWorksWithoutTLS(t *testing.T) {
	c := startCluster(t, 3, proctest.Insecure, calmElections)
	cl := &caller{admin: dialAs(t, c, c.Security()), id: "e2e-insecure"}
	drain(t, c, cl)
	victim, st := settledFollower(t, c)
	claim := c.waitLeader(10 * time.Second).ID() // speak as the leader

	a := newRaftAttacker(t, nil, claim)
	if ok, err := a.appendDelete(victim, st, drainedKey); !ok {
		t.Fatalf("forged AppendEntries: accepted %v, %v; want it accepted", ok, err)
	}
	waitStatus(t, victim, 10*time.Second, "the forged DeleteLimit applied on "+victim.ID(),
		func(s *pb.StatusResponse) bool { return s.GetKeys() == st.GetKeys()-1 })
	if err := a.timeoutNow(victim); err != nil {
		t.Fatalf("forged TimeoutNow: %v", err)
	}
	waitStatus(t, victim, 10*time.Second, victim.ID()+" leading after the forged TimeoutNow",
		func(s *pb.StatusResponse) bool { return s.GetNodeState() == pb.NodeState_NODE_STATE_LEADER })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	resp, err := victim.API().Acquire(ctx, &pb.AcquireRequest{ClientId: []byte("e2e-insecure"), Seq: 1000,
		Items: []*pb.AcquireItem{{Key: drainedKey, Count: 1, Limit: hourlyFive}}})
	cancel()
	if err != nil || !resp.GetAllowed() {
		t.Fatalf("acquire of the drained key on %s after the attack: %v, %v; want it admitted", victim.ID(), resp, err)
	}
	before := status(t, victim)
	if _, err := a.requestVote(victim, before.GetTerm(), before.GetCommitIndex()); err != nil {
		t.Fatalf("forged RequestVote: %v", err)
	}
	if after := status(t, victim); after.GetTerm() < before.GetTerm()+1000 {
		t.Errorf("forged RequestVote: term %d -> %d; want it pushed 1000 ahead", before.GetTerm(), after.GetTerm())
	}
}

// selfSigned returns a TLS certificate that signs itself and carries the
// identity id.
func selfSigned(t *testing.T, id pki.Identity) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: id.String()},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
		URIs:        []*url.URL{id.URI()}, BasicConstraintsValid: true, IsCA: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// presenting returns a client TLS configuration that presents the
// certificate in files and does not check the server: an attacker's.
func presenting(t *testing.T, files proc.TLSFiles) *tls.Config {
	t.Helper()
	cert, err := tls.LoadX509KeyPair(files.Cert, files.Key)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, InsecureSkipVerify: true, MinVersion: tls.VersionTLS12}
}

// TestRaftAttackRefusedWithTLS: the same attack against real serve
// processes over mutual TLS (the default) fails on the Raft port whatever
// the attacker presents but the node certificate of the member it claims to
// be: nothing (plain TCP, or TLS without a certificate), a self-signed
// certificate, a node certificate of another CA, a client's or an
// operator's certificate of the cluster's own CA, or a node certificate of
// the cluster's CA for another id. Every forged AppendEntries, TimeoutNow
// and RequestVote fails; the drained key stays drained, and the victim
// keeps its term, its keys and its role. Both refusals are logged.
func TestRaftAttackRefusedWithTLS(t *testing.T) {
	c := startCluster(t, 3, calmElections)
	app := proctest.ClientTLS(t, c.Cluster, "app")
	cl := &caller{admin: dialAs(t, c, proc.Security{TLS: &app}), id: "e2e-tls"}
	drain(t, c, cl)
	victim, st := settledFollower(t, c)
	leader := c.waitLeader(10 * time.Second)
	claim := leader.ID()

	certs := c.Certs()
	must := func(f proc.TLSFiles, err error) proc.TLSFiles {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	foreign := pkitest.New(t).Issue(pkitest.Node(claim))
	for _, tc := range []struct {
		name string
		cfg  *tls.Config
	}{
		{"plain TCP", nil},
		{"TLS without a certificate", &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12}},
		{"self-signed node certificate", &tls.Config{Certificates: []tls.Certificate{selfSigned(t, pkitest.Node(claim))},
			InsecureSkipVerify: true, MinVersion: tls.VersionTLS12}},
		{"node certificate of another CA", presenting(t, proc.TLSFiles{Cert: foreign.Cert, Key: foreign.Key})},
		{"client certificate", presenting(t, must(certs.Client("mallory")))},
		{"operator certificate", presenting(t, must(certs.Operator("mallory")))},
		{"node certificate naming another node", presenting(t, must(certs.Node("n9")))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := newRaftAttacker(t, tc.cfg, claim)
			if ok, err := a.appendDelete(victim, st, drainedKey); ok || err == nil {
				t.Errorf("forged AppendEntries: accepted %v, err %v; want it refused", ok, err)
			}
			if err := a.timeoutNow(victim); err == nil {
				t.Error("forged TimeoutNow succeeded")
			}
			if ok, err := a.requestVote(victim, st.GetTerm(), st.GetCommitIndex()); ok || err == nil {
				t.Errorf("forged RequestVote: granted %v, err %v; want it refused", ok, err)
			}
			now := status(t, victim)
			if now.GetTerm() != st.GetTerm() || now.GetNodeState() != pb.NodeState_NODE_STATE_FOLLOWER || now.GetKeys() != st.GetKeys() || now.GetLeaderId() != claim {
				t.Errorf("victim %s after the attack: term %d, %s, %d keys, leader %q; before: term %d, follower, %d keys, leader %q",
					victim.ID(), now.GetTerm(), now.GetNodeState(), now.GetKeys(), now.GetLeaderId(), st.GetTerm(), st.GetKeys(), claim)
			}
		})
	}
	resp, err := cl.acquire(t, drainedKey)
	if err != nil || resp.GetAllowed() {
		t.Errorf("acquire of the drained key after the attacks: %v, %v; want it refused", resp, err)
	}
	if now := status(t, leader); now.GetNodeState() != pb.NodeState_NODE_STATE_LEADER || now.GetTerm() != st.GetTerm() {
		t.Errorf("the leader %s after the attacks: %s in term %d; want still leader in term %d", leader.ID(), now.GetNodeState(), now.GetTerm(), st.GetTerm())
	}
	log, err := os.ReadFile(victim.LogPath())
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"raft: refused a connection", "raft: refused a request whose sender does not match its certificate"} {
		if !strings.Contains(string(log), want) {
			t.Errorf("%s's log lacks %q", victim.ID(), want)
		}
	}
}

// TestClientAPIRoles: on the client port of real serve processes, a caller
// without a certificate, or with one of another CA, gets no answer; a
// client's certificate acquires and reads a limit but gets PERMISSION_DENIED
// on SetLimit and DeleteLimit, which the node logs with who and what; an
// operator's certificate may do both.
func TestClientAPIRoles(t *testing.T) {
	c := startCluster(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	certs := c.Certs()
	app, err := certs.Client("app")
	if err != nil {
		t.Fatal(err)
	}
	op, err := certs.Operator("ops")
	if err != nil {
		t.Fatal(err)
	}
	foreign := pkitest.New(t).Issue(pkitest.Operator("ops"))
	set := func(ctx context.Context, api pb.LeaseholdClient) (*pb.SetLimitResponse, error) {
		return api.SetLimit(ctx, &pb.SetLimitRequest{Key: "roles", Limit: hourlyFive})
	}
	del := func(ctx context.Context, api pb.LeaseholdClient) (*pb.DeleteLimitResponse, error) {
		return api.DeleteLimit(ctx, &pb.DeleteLimitRequest{Key: "roles"})
	}

	for name, sec := range map[string]proc.Security{
		"no certificate (plain text)": proc.Plaintext,
		"operator of another CA":      {TLS: &proc.TLSFiles{CA: foreign.CA, Cert: foreign.Cert, Key: foreign.Key}},
	} {
		a := dialAs(t, c, sec)
		for _, st := range a.Status(ctx, 2*time.Second) {
			if st.Err == nil {
				t.Errorf("%s: %s answered Status", name, st.Name)
			}
		}
		sctx, scancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := set(sctx, c.Nodes()[0].API()) // the cluster's own connection works...
		scancel()
		if errors.Is(transport.FromStatus(err), transport.ErrPermissionDenied) {
			t.Fatalf("the cluster's operator connection was denied: %v", err)
		}
		cctx, ccancel := context.WithTimeout(ctx, 2*time.Second)
		_, err = proc.OnLeader(cctx, a, set) // ...this one does not
		ccancel()
		if err == nil {
			t.Errorf("%s: SetLimit succeeded", name)
		}
	}

	asApp := dialAs(t, c, proc.Security{TLS: &app})
	if _, err := proc.OnLeader(ctx, asApp, set); !errors.Is(err, transport.ErrPermissionDenied) {
		t.Errorf("SetLimit as client/app: %v; want PERMISSION_DENIED", err)
	}
	asOp := dialAs(t, c, proc.Security{TLS: &op})
	if _, err := proc.OnLeader(ctx, asOp, set); err != nil {
		t.Fatalf("SetLimit as operator/ops: %v", err)
	}
	cl := &caller{admin: asApp, id: "e2e-roles"}
	if resp, err := cl.acquire(t, "roles"); err != nil || !resp.GetAllowed() {
		t.Errorf("Acquire as client/app: %v, %v; want a token", resp, err)
	}
	got, err := proc.OnLeader(ctx, asApp, func(ctx context.Context, api pb.LeaseholdClient) (*pb.GetLimitResponse, error) {
		return api.GetLimit(ctx, &pb.GetLimitRequest{Key: "roles"})
	})
	if err != nil || got.GetLimit().GetLimit() != 5 {
		t.Errorf("GetLimit as client/app: %v, %v; want the limit", got, err)
	}
	if _, err := proc.OnLeader(ctx, asApp, del); !errors.Is(err, transport.ErrPermissionDenied) {
		t.Errorf("DeleteLimit as client/app: %v; want PERMISSION_DENIED", err)
	}
	if _, err := proc.OnLeader(ctx, asOp, del); err != nil {
		t.Errorf("DeleteLimit as operator/ops: %v", err)
	}
	denied := regexp.MustCompile(`msg="permission denied" who=client/app method=(SetLimit|DeleteLimit) needs=operator`)
	if !c.logged(denied) {
		t.Errorf("no node logged the denial (%v)", denied)
	}
}

// serialAt returns the serial of the certificate the server at addr
// presents to a TLS client presenting files' certificate.
func serialAt(t *testing.T, addr string, files proc.TLSFiles) string {
	t.Helper()
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, presenting(t, files))
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0].SerialNumber.String()
}

// fileSerial returns the serial of the certificate in file.
func fileSerial(t *testing.T, file string) string {
	t.Helper()
	cert, err := tls.LoadX509KeyPair(file, strings.TrimSuffix(file, ".pem")+"-key.pem")
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	return c.SerialNumber.String()
}

// TestRotatedCertificateNeedsNoRestart: `leasehold certs node --force`
// writes a new certificate over a running node's files; the node's new
// connections, on the client port and the Raft port, present it at once,
// the same process goes on serving, and the cluster's operator still sets
// limits over a new connection.
func TestRotatedCertificateNeedsNoRestart(t *testing.T) {
	c := startCluster(t, 1)
	node := c.Nodes()[0]
	pid := node.PID()
	op, err := c.Certs().Operator(proc.AdminName)
	if err != nil {
		t.Fatal(err)
	}
	peer, err := c.Certs().Node("n2")
	if err != nil {
		t.Fatal(err)
	}
	before := serialAt(t, node.ClientAddr(), op)
	if raft := serialAt(t, node.RaftAddr(), peer); raft != before || before != fileSerial(t, node.Spec().TLS.Cert) {
		t.Fatalf("serials before the rotation: client port %s, Raft port %s, file %s", before, raft, fileSerial(t, node.Spec().TLS.Cert))
	}

	cmd := exec.Command(proctest.Binary(t), "certs", "node", "--dir", c.Certs().Dir(), "--force", node.ID())
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("leasehold certs: %v\n%s", err, out)
	}
	rotated := fileSerial(t, node.Spec().TLS.Cert)
	if rotated == before {
		t.Fatal("leasehold certs --force wrote the same certificate")
	}
	if got := serialAt(t, node.ClientAddr(), op); got != rotated {
		t.Errorf("client port presents serial %s after the rotation; want the new %s", got, rotated)
	}
	if got := serialAt(t, node.RaftAddr(), peer); got != rotated {
		t.Errorf("Raft port presents serial %s after the rotation; want the new %s", got, rotated)
	}
	if node.PID() != pid || !node.Running() {
		t.Errorf("the node was restarted: pid %d -> %d", pid, node.PID())
	}
	a := dialAs(t, c, proc.Security{TLS: &op})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := proc.OnLeader(ctx, a, func(ctx context.Context, api pb.LeaseholdClient) (*pb.SetLimitResponse, error) {
		return api.SetLimit(ctx, &pb.SetLimitRequest{Key: "rotated", Limit: hourlyFive})
	}); err != nil {
		t.Fatalf("SetLimit over a new connection after the rotation: %v", err)
	}
	log, _ := os.ReadFile(node.LogPath())
	if !strings.Contains(string(log), "tls: loaded a new certificate or CA") {
		t.Error("the node did not log the reload")
	}
}
