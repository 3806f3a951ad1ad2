package cluster

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"github.com/leasehold/leasehold/internal/pki"
)

// Gossip authenticates no one: memberlist takes any alive message sealed
// with the gossip key, for any node name, and the highest incarnation
// wins (at math.MaxUint32 the named node's own refutation wraps to 0 and
// is ignored). So what gossip says about a member is a claim, and the
// leader checks each claim it would change the Raft configuration for by
// asking the member itself over Raft: through this node's own transport,
// which, over TLS, reaches only a peer whose certificate names the id
// (DESIGN.md, "Membership": "Gossip claims are proven over Raft").

// maxProofsPerReconcile bounds how many members one reconcile asks; the
// rest wait for the next one (forged names cost an outsider nothing).
const maxProofsPerReconcile = 8

// proofRetry is how long a claim that failed its proof is not asked again
// (the same member at the same address for the same change).
const proofRetry = 5 * time.Second

// memberAnswer is what a member answered, over Raft, to askMember.
type memberAnswer struct {
	term    uint64 // its current term
	lastLog uint64 // its last log index
	// gated: it refused a vote with its vote gate's error (a node that
	// started with no Raft state and has not been added yet), or as a node
	// still deciding whether to bootstrap.
	gated bool
}

// askMember asks member id at Raft address addr, the way this node's Raft
// reaches it (DialAddrs; over TLS, only a peer whose node certificate
// names id answers), for its term and last log index (an AppendEntries of
// term 0, which raft answers and acts on in no way, as the start-up probe
// does) and, if askVote, whether its vote gate is shut (a pre-vote of term
// 0, which raft refuses without a change; a shut gate answers
// errVoteGated instead). Each step is bounded by timeout. It is safe for
// concurrent use.
func (n *Node) askMember(id, addr string, askVote bool, timeout time.Duration) (memberAnswer, error) {
	dial, provider, toTarget := n.raftDialer()
	target := raft.ServerAddress(addr)
	if toTarget != nil {
		target = toTarget(raft.ServerID(id), target)
	}
	trans := newProbeTransport(n.advertise, provider, dial, timeout, newHCLog(n.log, "prove"))
	defer trans.Close()
	// The header names this node at its advertised address: a follower
	// that knows it as its leader refuses the pre-vote without a warning.
	hdr := raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte(n.cfg.ID), Addr: []byte(n.advertise)}
	var resp raft.AppendEntriesResponse
	if err := trans.AppendEntries(raft.ServerID(id), target, &raft.AppendEntriesRequest{RPCHeader: hdr}, &resp); err != nil {
		return memberAnswer{}, err
	}
	// raft names the answering server in its answer's header (a node
	// deciding whether to bootstrap names none). Over TLS the certificate
	// already did; without TLS this catches another node at the address
	// (an address taken over by another member), not a liar.
	if got := string(resp.ID); got != "" && got != id {
		return memberAnswer{}, fmt.Errorf("the node at %s answers as %q, not %q", addr, got, id)
	}
	ans := memberAnswer{term: resp.Term, lastLog: resp.LastLog}
	if askVote {
		var vr raft.RequestPreVoteResponse
		err := trans.RequestPreVote(raft.ServerID(id), target, &raft.RequestPreVoteRequest{RPCHeader: hdr}, &vr)
		// A remote error crosses raft's wire as its text only. A node
		// still deciding whether to bootstrap has no state and grants no
		// vote either (answerAsEmpty).
		ans.gated = err != nil && (err.Error() == errVoteGated.Error() || err.Error() == errNotStarted.Error())
	}
	return ans, nil
}

// raftDialer returns how this node's Raft dials a peer: dial, the
// provider of dial addresses (DialAddrs), and, over TLS, target, which
// turns a peer's id and address into what dial expects ("host:port#id":
// the peer's certificate must name the id); target is nil without TLS.
func (n *Node) raftDialer() (dial func(raft.ServerAddress, time.Duration) (net.Conn, error),
	provider raft.ServerAddressProvider, target func(raft.ServerID, raft.ServerAddress) raft.ServerAddress) {
	if s := n.secure; s != nil {
		return s.dial, nil, s.target
	}
	return n.stream.Dial, n.addrProvider(), nil
}

// newProbeTransport is a raft transport that only dials (through dial),
// one connection per RPC, closed after it.
func newProbeTransport(self string, provider raft.ServerAddressProvider,
	dial func(raft.ServerAddress, time.Duration) (net.Conn, error), timeout time.Duration, logger hclog.Logger) *raft.NetworkTransport {
	stream := &dialOnlyStream{dial: dial, closed: make(chan struct{}), addr: tcpAddr(self)}
	return raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream:                stream,
		ServerAddressProvider: provider,
		MaxPool:               0,
		Timeout:               timeout,
		Logger:                logger,
	})
}

// claimKind is a change of the Raft configuration gossip asks for.
type claimKind int

const (
	claimAdd   claimKind = iota + 1 // a fresh member not in the configuration: add it
	claimMove                       // a member at a new Raft address: update it in place
	claimFresh                      // a voter that lost its state: remove it and add it again
	claimGone                       // a member gossip says left or died: remove it
	claimRoute                      // a member at a new Raft address: dial it there (routeMembers)
)

func (k claimKind) String() string {
	switch k {
	case claimAdd:
		return "new member"
	case claimMove:
		return "new Raft address"
	case claimFresh:
		return "voter that lost its state"
	case claimGone:
		return "member gone"
	case claimRoute:
		return "Raft address to dial"
	}
	return "unknown"
}

// claim is one thing gossip says about a member that the leader would
// act on, at the Raft address it would be proven at.
type claim struct {
	kind claimKind
	id   string
	addr string
}

// holds reports whether the member's answer proves the claim: any answer
// proves the member is at addr (Add, Move, Route; over TLS only the member
// itself can answer, and askMember refuses an answer naming another id);
// Fresh needs its vote gate shut; Gone is disproven by any answer (the
// member is there).
func (c claim) holds(ans memberAnswer, err error) bool {
	switch c.kind {
	case claimAdd, claimMove, claimRoute:
		return err == nil
	case claimFresh:
		return err == nil && ans.gated
	case claimGone:
		return err != nil
	}
	return false
}

// prove asks the members the claims name, at most maxProofsPerReconcile
// of them at once in a random order, skipping claims that failed within
// proofRetry, and returns those that hold. A claim that does not hold is
// logged, rate-limited, and remembered for proofRetry.
func (m *membership) prove(claims []claim) []claim {
	now := time.Now()
	m.mu.Lock()
	for c, at := range m.mu.unproven {
		if now.Sub(at) >= proofRetry {
			delete(m.mu.unproven, c)
		}
	}
	ask := make([]claim, 0, len(claims))
	for _, c := range claims {
		if _, failed := m.mu.unproven[c]; !failed {
			ask = append(ask, c)
		}
	}
	m.mu.Unlock()
	rand.Shuffle(len(ask), func(i, j int) { ask[i], ask[j] = ask[j], ask[i] })
	ask = ask[:min(len(ask), maxProofsPerReconcile)]

	ok := make([]bool, len(ask))
	var wg sync.WaitGroup
	for i, c := range ask {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ans, err := m.n.askMember(c.id, c.addr, c.kind == claimFresh, m.n.cfg.ProbeTimeout)
			ok[i] = c.holds(ans, err)
			if !ok[i] {
				m.claimLog.Log(m.log, slog.LevelWarn, "gossip: not acting on a claim the member, asked over Raft, does not bear out",
					"claim", c.kind.String(), "member", c.id, "raft", c.addr, "answer", describeAnswer(ans, err))
			}
		}()
	}
	wg.Wait()
	var out []claim
	m.mu.Lock()
	defer m.mu.Unlock()
	for i, c := range ask {
		if ok[i] {
			out = append(out, c)
		} else {
			m.mu.unproven[c] = now
		}
	}
	return out
}

// describeAnswer says what a member answered askMember, for a log line.
func describeAnswer(ans memberAnswer, err error) string {
	if err != nil {
		return "no answer: " + err.Error()
	}
	return fmt.Sprintf("term %d, last log index %d, vote gate shut %v", ans.term, ans.lastLog, ans.gated)
}

// The client API and HTTP addresses a member gossips are handed to SDKs,
// the CLI and the console (NotLeader, Status, Members, Member). They
// verify a node certificate of the cluster's CA, but any node's: a forged
// address naming another node's port sent them to a follower, which named
// the same address again, and the leader was never found. Over TLS each
// such address is believed until a TLS handshake at it shows a certificate
// that does not name the member (servedAddr).

// addrProofRetry is how long an address that failed its proof is not
// served, nor asked again.
const addrProofRetry = 30 * time.Second

// maxAddrProofs bounds the proofs of served addresses in flight at once; an
// address that would need one more is not served meanwhile.
const maxAddrProofs = 8

// addrKey is a member's gossiped client or HTTP address.
type addrKey struct{ id, addr string }

// addrProof is what a proof of an addrKey found.
type addrProof struct {
	done, ok bool
	at       time.Time // when it ended
}

// servedAddr returns addr, member id's gossiped client or HTTP address, if
// it may be handed out: always without TLS; over TLS unless a handshake at
// addr showed a certificate that does not name id (within addrProofRetry),
// starting that proof if none was made. "" otherwise.
func (m *membership) servedAddr(id, addr string) string {
	if addr == "" || m.n.cfg.TLS == nil || id == m.n.cfg.ID {
		return addr
	}
	k := addrKey{id, addr}
	now := time.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	p, known := m.mu.addrProofs[k]
	switch {
	case known && !p.done:
		return addr // being proven
	case known && p.ok:
		return addr
	case known && now.Sub(p.at) < addrProofRetry:
		return ""
	}
	running := 0
	for k, p := range m.mu.addrProofs {
		switch {
		case !p.done:
			running++
		case now.Sub(p.at) >= addrProofRetry && !p.ok, now.Sub(p.at) >= 10*addrProofRetry:
			delete(m.mu.addrProofs, k)
		}
	}
	if running >= maxAddrProofs || m.closing() {
		return ""
	}
	m.mu.addrProofs[k] = addrProof{}
	m.wg.Add(1) // under m.mu, close not begun (see close)
	go func() {
		defer m.wg.Done()
		err := m.proveServed(id, addr)
		m.mu.Lock()
		m.mu.addrProofs[k] = addrProof{done: true, ok: err == nil, at: time.Now()}
		m.mu.Unlock()
		if err != nil {
			m.claimLog.Log(m.log, slog.LevelWarn, "gossip: not handing out an address that does not serve its member's certificate",
				"member", id, "addr", addr, "err", err)
		}
	}()
	return addr
}

// proveServed runs a TLS handshake at addr, bounded by ProbeTimeout or
// close, and checks that the certificate served names member id.
func (m *membership) proveServed(id, addr string) error {
	ctx, cancel := context.WithTimeout(context.Background(), m.n.cfg.ProbeTimeout)
	defer cancel()
	ctx, stop := m.untilClose(ctx)
	defer stop()
	cfg := m.n.cfg.TLS.ClientConfig(false, pki.RequireIdentity(pki.Identity{Role: pki.RoleNode, Name: id}))
	cfg.NextProtos = []string{"h2", "http/1.1"}
	d := tls.Dialer{Config: cfg}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	return c.Close()
}
