package web

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/leasehold/leasehold/cluster"
	"github.com/leasehold/leasehold/fsm"
	"github.com/leasehold/leasehold/internal/clustertest"
	"github.com/leasehold/leasehold/internal/pki"
	"github.com/leasehold/leasehold/internal/pki/pkitest"
	"github.com/leasehold/leasehold/internal/testlog"
	"github.com/leasehold/leasehold/transport"
	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

// fakeNode is a Node whose answers the test sets.
type fakeNode struct {
	id       string
	health   cluster.Health
	leader   string // "" is this node; else SetLimit answers NotLeader naming it
	activity cluster.Activity
	// limits are the keys' limits, as KeyStates reports them; nil gives
	// acme:gpt-4.1 100 per second and no other key a limit.
	limits map[string]fsm.Limit

	mu   sync.Mutex
	sets []*pb.SetLimitRequest
	dels []*pb.DeleteLimitRequest
}

func (f *fakeNode) ID() string { return f.id }

func (f *fakeNode) Health() cluster.Health {
	h := f.health
	h.ID = f.id
	return h
}

func (f *fakeNode) Status(context.Context, *pb.StatusRequest) (*pb.StatusResponse, error) {
	return &pb.StatusResponse{NodeId: f.id, LeaderId: f.leaderID(), Term: 3, Keys: 5, MaxKeys: 10, Sessions: 2,
		MaxSessions: 4, Leases: 1, Servers: []*pb.Server{
			{Id: "n1", RaftAddr: "127.0.0.1:7201", Voter: true},
			{Id: "n2", RaftAddr: "127.0.0.1:7202", Voter: true},
			{Id: "n3", RaftAddr: "127.0.0.1:7203", Voter: true},
		}}, nil
}

func (f *fakeNode) leaderID() string {
	if f.leader == "" {
		return f.id
	}
	return f.leader
}

func (f *fakeNode) Activity(int, string) cluster.Activity { return f.activity }

func (f *fakeNode) KeyStates(keys []string) []cluster.KeyState {
	limits := f.limits
	if limits == nil {
		limits = map[string]fsm.Limit{"acme:gpt-4.1": {Algorithm: fsm.TokenBucket, Limit: 100, Period: time.Second}}
	}
	out := make([]cluster.KeyState, len(keys))
	for i, k := range keys {
		l, found := limits[k]
		out[i] = cluster.KeyState{Key: k, Found: found, Limit: l, Lessees: 2, Leases: 3, Leased: 30}
	}
	return out
}

func (f *fakeNode) SetLimit(_ context.Context, req *pb.SetLimitRequest) (*pb.SetLimitResponse, error) {
	if err := transport.ValidateSetLimit(req); err != nil {
		return nil, err
	}
	if f.leader != "" {
		return nil, &transport.NotLeaderError{LeaderID: f.leader, LeaderRaftAddr: "127.0.0.1:7201"}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sets = append(f.sets, req)
	return &pb.SetLimitResponse{}, nil
}

func (f *fakeNode) DeleteLimit(_ context.Context, req *pb.DeleteLimitRequest) (*pb.DeleteLimitResponse, error) {
	if f.leader != "" {
		return nil, &transport.NotLeaderError{LeaderID: f.leader}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.dels = append(f.dels, req)
	found := f.KeyStates([]string{req.Key})[0].Found
	return &pb.DeleteLimitResponse{Found: &found}, nil
}

// lastSet returns the last SetLimit the node took, or nil.
func (f *fakeNode) lastSet() *pb.SetLimitRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.sets) == 0 {
		return nil
	}
	return f.sets[len(f.sets)-1]
}

func (f *fakeNode) setCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.sets)
}

// serve serves cfg on a free loopback port until the test ends and returns
// the server's address.
func serve(t *testing.T, cfg Config) (*Server, string) {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.Close(ctx); err != nil {
			t.Error(err)
		}
		if err := <-done; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("Serve: %v", err)
		}
	})
	return s, ln.Addr().String()
}

func do(t *testing.T, c *http.Client, method, url, contentType, body string, hdr ...string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestHealthEndpoints(t *testing.T) {
	n := &fakeNode{id: "n1"}
	_, addr := serve(t, Config{Node: n})
	c := &http.Client{Timeout: 5 * time.Second}
	if code, body := do(t, c, "GET", "http://"+addr+"/healthz", "", ""); code != 200 || body != "ok\n" {
		t.Errorf("/healthz: %d %q", code, body)
	}
	if code, body := do(t, c, "GET", "http://"+addr+"/readyz", "", ""); code != 200 || body != "ready\n" {
		t.Errorf("/readyz of a ready node: %d %q", code, body)
	}
	n.health.Problems = []string{"no leader is known", "disk check failed: no space left on device"}
	code, body := do(t, c, "GET", "http://"+addr+"/readyz", "", "")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "no space left on device") || !strings.Contains(body, "no leader") {
		t.Errorf("/readyz of a node with problems: %d %q", code, body)
	}
}

// TestAccessWithTLS: with TLS, probes need no certificate, reading needs
// one of the CA, changing limits an operator's (or a node's).
func TestAccessWithTLS(t *testing.T) {
	d := pkitest.New(t)
	n := &fakeNode{id: "n1"}
	_, addr := serve(t, Config{Node: n, TLS: d.Source(pkitest.Node("n1"))})
	base := "https://" + addr
	clientFor := func(id *pki.Identity) *http.Client {
		var cfg *tls.Config
		if id == nil {
			// A probe: no certificate, and the server's trusted.
			cfg = &tls.Config{InsecureSkipVerify: true}
		} else {
			cfg = d.Source(*id).ClientConfig(true, pki.RequireRole(pki.RoleNode))
		}
		return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}
	}
	client, operator, node := pkitest.Client("app"), pkitest.Operator("admin"), pkitest.Node("n2")
	form := url.Values{"action": {"set"}, "key": {"acme:gpt-4.1"}, "algorithm": {"token-bucket"}, "limit": {"10"}, "per": {"1m"}}.Encode()
	for _, tc := range []struct {
		name         string
		id           *pki.Identity
		path, method string
		want         int
	}{
		{"probe healthz", nil, "/healthz", "GET", 200},
		{"probe readyz", nil, "/readyz", "GET", 200},
		{"probe metrics", nil, "/metrics", "GET", 401},
		{"probe console", nil, "/", "GET", 401},
		{"probe keys", nil, "/api/keys", "GET", 401},
		{"client metrics", &client, "/metrics", "GET", 200},
		{"client console", &client, "/", "GET", 200},
		{"client set", &client, "/limits", "POST", 403},
		{"operator set", &operator, "/limits", "POST", 200},
		{"node set", &node, "/limits", "POST", 200},
	} {
		body := ""
		if tc.method == "POST" {
			body = form
		}
		code, got := do(t, clientFor(tc.id), tc.method, base+tc.path, "application/x-www-form-urlencoded", body)
		if code != tc.want {
			t.Errorf("%s: %s %s = %d; want %d (%.200s)", tc.name, tc.method, tc.path, code, tc.want, got)
		}
		if tc.name == "client set" && !strings.Contains(got, "client/app may not change limits") {
			t.Errorf("client set: %q does not say why", got)
		}
		// A scrape without a certificate is told what to give Prometheus,
		// and where the README says it.
		if tc.name == "probe metrics" && (!strings.Contains(got, "leasehold certs client NAME") || !strings.Contains(got, `"Monitoring"`)) {
			t.Errorf("probe metrics: %q does not say which certificate to give, nor where the README says so", got)
		}
	}
	if got := n.setCount(); got != 2 {
		t.Errorf("%d limits set; want 2 (operator, node)", got)
	}
	// A certificate of another CA does not get in.
	other := pkitest.New(t)
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: other.Source(pkitest.Operator("eve")).ClientConfig(false, nil)}}
	if _, err := c.Get(base + "/healthz"); err == nil {
		t.Error("a certificate of another CA was accepted")
	}
}

// TestFormUsesTheAPIsValidation: the form refuses what the API refuses,
// with the API's message, naming the input at fault.
func TestFormUsesTheAPIsValidation(t *testing.T) {
	n := &fakeNode{id: "n1"}
	_, addr := serve(t, Config{Node: n})
	c := &http.Client{Timeout: 5 * time.Second}
	for _, tc := range []struct {
		name      string
		form      limitForm
		field     string
		apiReason *pb.SetLimitRequest // the request whose API error the message must be
		contains  string
	}{
		{name: "zero limit", form: limitForm{Key: "k", Algorithm: "token-bucket", Limit: "0", Per: "1s"}, field: "limit",
			apiReason: &pb.SetLimitRequest{Key: "k", Limit: &pb.Limit{Algorithm: pb.Algorithm_TOKEN_BUCKET, PeriodNs: int64(time.Second)}}},
		{name: "no period", form: limitForm{Key: "k", Algorithm: "token-bucket", Limit: "5"}, field: "per",
			apiReason: &pb.SetLimitRequest{Key: "k", Limit: &pb.Limit{Algorithm: pb.Algorithm_TOKEN_BUCKET, Limit: 5}}},
		{name: "too many slots", form: limitForm{Key: "k", Algorithm: "sliding-window", Limit: "5", Per: "1s", Slots: "65"}, field: "slots",
			apiReason: &pb.SetLimitRequest{Key: "k", Limit: &pb.Limit{Algorithm: pb.Algorithm_SLIDING_WINDOW, Limit: 5,
				PeriodNs: int64(time.Second), Slots: 65}}},
		{name: "empty key", form: limitForm{Algorithm: "token-bucket", Limit: "5", Per: "1s"}, field: "key",
			apiReason: &pb.SetLimitRequest{Limit: &pb.Limit{Algorithm: pb.Algorithm_TOKEN_BUCKET, Limit: 5, PeriodNs: int64(time.Second)}}},
		{name: "bad duration", form: limitForm{Key: "k", Algorithm: "token-bucket", Limit: "5", Per: "soon"}, field: "per",
			contains: `per "soon" is not a duration`},
		{name: "bad number", form: limitForm{Key: "k", Algorithm: "token-bucket", Limit: "many", Per: "1s"}, field: "limit",
			contains: `limit "many" is not a whole number`},
		{name: "bad algorithm", form: limitForm{Key: "k", Algorithm: "leaky", Limit: "5", Per: "1s"}, field: "algorithm",
			contains: `algorithm "leaky"`},
	} {
		b, _ := json.Marshal(tc.form)
		code, body := do(t, c, "POST", "http://"+addr+"/api/limits", "application/json", string(b))
		var res limitResult
		if err := json.Unmarshal([]byte(body), &res); err != nil {
			t.Fatalf("%s: %v: %s", tc.name, err, body)
		}
		if code != http.StatusBadRequest || res.OK || res.Field != tc.field {
			t.Errorf("%s: %d %+v; want 400 naming %s", tc.name, code, res, tc.field)
		}
		if tc.apiReason != nil {
			if want := transport.ValidateSetLimit(tc.apiReason).Error(); res.Message != want {
				t.Errorf("%s: message %q; want the API's %q", tc.name, res.Message, want)
			}
		}
		if tc.contains != "" && !strings.Contains(res.Message, tc.contains) {
			t.Errorf("%s: message %q; want it to say %q", tc.name, res.Message, tc.contains)
		}
	}
	if n.setCount() != 0 {
		t.Errorf("%d refused limits reached the node", n.setCount())
	}
}

// TestFollowerSaysWhereTheLeaderIs: without the leader's address a
// follower's console names the leader; with it, it forwards the change.
func TestFollowerForwardsOrSaysWhereTheLeaderIs(t *testing.T) {
	leader := &fakeNode{id: "n1"}
	_, leaderAddr := serve(t, Config{Node: leader})
	c := &http.Client{Timeout: 5 * time.Second}
	form := url.Values{"action": {"set"}, "key": {"acme:gpt-4.1"}, "algorithm": {"token-bucket"}, "limit": {"10"}, "per": {"1m"}}.Encode()

	alone := &fakeNode{id: "n2", leader: "n1"}
	_, aloneAddr := serve(t, Config{Node: alone})
	code, body := do(t, c, "POST", "http://"+aloneAddr+"/limits", "application/x-www-form-urlencoded", form)
	if code != http.StatusConflict || !strings.Contains(body, "n2 is a follower and cannot change limits; n1 leads") {
		t.Errorf("a follower without the leader's address: %d %.300q", code, body)
	}

	linked := &fakeNode{id: "n3", leader: "n1"}
	var logs testlog.Buffer
	_, linkedAddr := serve(t, Config{Node: linked, Peers: StaticPeers{"n1": leaderAddr}, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	code, body = do(t, c, "POST", "http://"+linkedAddr+"/limits", "application/x-www-form-urlencoded", form)
	if code != http.StatusOK || !strings.Contains(body, "forwarded by n3") {
		t.Errorf("a follower that knows the leader: %d %.300q", code, body)
	}
	// The leader logs the change as n3's; who asked n3 is logged there (an
	// attacker's review found the operator's name lost).
	if !strings.Contains(logs.String(), `msg="console: limit changed through the leader" by=`) ||
		!strings.Contains(logs.String(), `action=set key=acme:gpt-4.1 leader=n1`) {
		t.Errorf("the follower logged no change made through the leader:\n%s", logs.String())
	}
	if leader.setCount() != 1 {
		t.Errorf("the leader got %d changes; want 1", leader.setCount())
	}
	// The leader's console shows the other members' health from theirs.
	code, body = do(t, c, "GET", "http://"+linkedAddr+"/api/cluster", "", "")
	var cv clusterView
	if err := json.Unmarshal([]byte(body), &cv); code != 200 || err != nil {
		t.Fatalf("/api/cluster: %d %v", code, err)
	}
	if len(cv.Members) != 3 || !cv.Members[0].Reachable || cv.Members[0].ID != "n1" || cv.Members[1].Reachable ||
		!strings.Contains(cv.Members[1].Error, "unknown") || !cv.Members[2].Self {
		t.Errorf("members = %+v", cv.Members)
	}
}

// TestConsoleShowsTheCaps: the cluster view shows keys and sessions out of
// the node's caps, on the page and in /api/cluster, as `leasehold status`
// does.
func TestConsoleShowsTheCaps(t *testing.T) {
	_, addr := serve(t, Config{Node: &fakeNode{id: "n1"}})
	c := &http.Client{Timeout: 5 * time.Second}
	code, body := do(t, c, "GET", "http://"+addr+"/", "", "")
	if code != http.StatusOK || !strings.Contains(body, "5/10 keys, 1 leases, 2/4 sessions") {
		t.Errorf("GET /: %d, no \"5/10 keys, 1 leases, 2/4 sessions\" in %.2000q", code, body)
	}
	code, body = do(t, c, "GET", "http://"+addr+"/api/cluster", "", "")
	var cv clusterView
	if err := json.Unmarshal([]byte(body), &cv); code != http.StatusOK || err != nil {
		t.Fatalf("/api/cluster: %d %v", code, err)
	}
	if cv.Keys != 5 || cv.MaxKeys != 10 || cv.Sessions != 2 || cv.MaxSessions != 4 {
		t.Errorf("/api/cluster keys %d/%d, sessions %d/%d; want 5/10 and 2/4", cv.Keys, cv.MaxKeys, cv.Sessions, cv.MaxSessions)
	}
}

// TestFollowerForwardsThroughMemberPeers: a follower whose Peers come from
// gossip (MemberPeers over Node.Member) finds the leader's console there
// and forwards the change; a member that gossips no HTTP address, or that
// gossip does not know, has none.
func TestFollowerForwardsThroughMemberPeers(t *testing.T) {
	leader := &fakeNode{id: "n1"}
	_, leaderAddr := serve(t, Config{Node: leader})
	gossip := map[string]cluster.MemberInfo{
		"n1": {ID: "n1", HTTPAddr: leaderAddr, Alive: true},
		"n2": {ID: "n2", ClientAddr: "127.0.0.1:7102", Alive: true}, // no --http-addr
	}
	peers := MemberPeers(func(id string) (cluster.MemberInfo, bool) {
		m, ok := gossip[id]
		return m, ok
	})
	for id, want := range map[string]string{"n1": leaderAddr, "n2": "", "n9": ""} {
		if got, ok := peers.HTTPAddr(id); got != want || ok != (want != "") {
			t.Errorf("HTTPAddr(%s) = %q, %v; want %q", id, got, ok, want)
		}
	}
	follower := &fakeNode{id: "n3", leader: "n1"}
	_, addr := serve(t, Config{Node: follower, Peers: peers})
	c := &http.Client{Timeout: 5 * time.Second}
	form := url.Values{"action": {"set"}, "key": {"acme:gpt-4.1"}, "algorithm": {"token-bucket"}, "limit": {"10"}, "per": {"1m"}}.Encode()
	code, body := do(t, c, "POST", "http://"+addr+"/limits", "application/x-www-form-urlencoded", form)
	if code != http.StatusOK || !strings.Contains(body, "forwarded by n3") || leader.setCount() != 1 {
		t.Errorf("a follower that finds the leader in gossip: %d %.300q, leader got %d", code, body, leader.setCount())
	}
}

// TestCrossOriginWritesRefused: a page on another site cannot post the form
// with the browser's certificate.
func TestCrossOriginWritesRefused(t *testing.T) {
	n := &fakeNode{id: "n1"}
	_, addr := serve(t, Config{Node: n})
	c := &http.Client{Timeout: 5 * time.Second}
	form := url.Values{"action": {"set"}, "key": {"k"}, "algorithm": {"token-bucket"}, "limit": {"10"}, "per": {"1m"}}.Encode()
	code, _ := do(t, c, "POST", "http://"+addr+"/limits", "application/x-www-form-urlencoded", form,
		"Origin", "https://evil.example", "Sec-Fetch-Site", "cross-site")
	if code != http.StatusForbidden || n.setCount() != 0 {
		t.Errorf("a cross-site post: %d, %d limits set", code, n.setCount())
	}
	code, _ = do(t, c, "POST", "http://"+addr+"/limits", "application/x-www-form-urlencoded", form,
		"Origin", "http://"+addr, "Sec-Fetch-Site", "same-origin")
	if code != http.StatusOK || n.setCount() != 1 {
		t.Errorf("a same-origin post: %d, %d limits set", code, n.setCount())
	}
}

func TestSeriesRates(t *testing.T) {
	s := newSeriesStore(4, time.Second)
	t0 := time.Unix(1000, 0)
	at := func(i int) time.Time { return t0.Add(time.Duration(i) * time.Second) }
	key := func(name string, serial, a, d uint64) cluster.KeyActivity {
		return cluster.KeyActivity{Key: name, Serial: serial, Admitted: a, Denied: d}
	}
	s.add(at(0), cluster.Activity{Admitted: 0, Keys: []cluster.KeyActivity{key("a", 1, 0, 0)}})
	s.add(at(1), cluster.Activity{Admitted: 10, Keys: []cluster.KeyActivity{key("a", 1, 10, 2)}})
	s.add(at(3), cluster.Activity{Admitted: 30, Keys: []cluster.KeyActivity{key("a", 1, 30, 2)}}) // 2s gap: 10/s
	s.add(at(4), cluster.Activity{Admitted: 35, Keys: []cluster.KeyActivity{key("a", 2, 5, 0)}})  // evicted and back: unknown
	snap := s.snapshot([]string{"a"})
	got := snap.Keys["a"].Series.Admitted
	want := []float64{10, 10, math.NaN()} // the first sample fell off the ring of 4... the oldest kept is at(1)
	if len(got) != 4 {
		t.Fatalf("%d samples; want 4", len(got))
	}
	for i, w := range append([]float64{math.NaN()}, want...)[1:] {
		g := got[i+1]
		switch {
		case math.IsNaN(w) && g != nil:
			t.Errorf("sample %d = %v; want unknown", i+1, *g)
		case !math.IsNaN(w) && (g == nil || *g != w):
			t.Errorf("sample %d = %v; want %v", i+1, g, w)
		}
	}
	if d := snap.Keys["a"].Series.Denied[1]; d == nil || *d != 2 {
		t.Errorf("denied/s = %v; want 2", d)
	}
	if snap.TotalA != (10+10+5)/3.0 {
		t.Errorf("recent total admitted/s = %v", snap.TotalA)
	}
	// A key gone from the busiest keys is forgotten once its series is all gaps.
	for i := 5; i < 10; i++ {
		s.add(at(i), cluster.Activity{Admitted: 35})
	}
	if _, ok := s.snapshot([]string{"a"}).Keys["a"]; ok {
		t.Error("a key absent for a whole ring is still kept")
	}
}

func TestModelOf(t *testing.T) {
	for key, want := range map[string]string{
		"tenant-42:gpt-4.1":       "gpt-4.1",
		"acme:gpt-4.1:output":     "gpt-4.1",
		"acme:claude-sonnet-4:in": "claude-sonnet-4",
		"plain":                   "",
		"trailing:":               "",
	} {
		if got := modelOf(key); got != want {
			t.Errorf("modelOf(%q) = %q; want %q", key, got, want)
		}
	}
}

func TestKeysViewRanksAndLooksUp(t *testing.T) {
	n := &fakeNode{id: "n1", activity: cluster.Activity{Keys: []cluster.KeyActivity{
		{Key: "acme:gpt-4.1", Weight: 5}, {Key: "globex:gpt-4.1", Weight: 9}, {Key: "plain", Weight: 1},
	}}}
	s, err := New(Config{Node: n, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(context.Background())
	v := s.keysState("", 10)
	if len(v.Keys) != 3 || v.Keys[0].Key != "globex:gpt-4.1" {
		t.Errorf("keys = %+v", v.Keys)
	}
	if v.Keys[1].Limit == nil || v.Keys[1].Limit.PerSecond != 100 || v.Keys[1].Leases != 3 || v.Keys[1].Lessees != 2 {
		t.Errorf("acme:gpt-4.1 row = %+v", v.Keys[1])
	}
	if len(v.Models) != 1 || v.Models[0].Model != "gpt-4.1" || v.Models[0].Keys != 2 {
		t.Errorf("models = %+v", v.Models)
	}
}

// TestAPINodeAlwaysSaidNonVoter: /api/node answered "voter": false for
// every node, a voter too, as nothing filled the field (the console's
// member table took suffrage from the Raft configuration instead, so only
// a script reading /api/node saw it). Over a real one-node cluster, whose
// one server is a voter.
func TestAPINodeAlwaysSaidNonVoter(t *testing.T) {
	node, _ := clustertest.Start(t)
	_, addr := serve(t, Config{Node: node})
	c := &http.Client{Timeout: 5 * time.Second}
	code, body := do(t, c, "GET", "http://"+addr+"/api/node", "", "")
	var v map[string]any
	if err := json.Unmarshal([]byte(body), &v); code != http.StatusOK || err != nil {
		t.Fatalf("/api/node: %d %q: %v", code, body, err)
	}
	if v["id"] != node.ID() || v["voter"] != true {
		t.Errorf("/api/node of the one voter of a cluster: %s; want its id and \"voter\":true", body)
	}
}
