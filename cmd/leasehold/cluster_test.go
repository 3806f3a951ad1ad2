//go:build unix

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/leasehold/leasehold/internal/loopback"
	"github.com/leasehold/leasehold/internal/pki"
	"github.com/leasehold/leasehold/internal/proc"
	"github.com/leasehold/leasehold/transport"
	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

// freeBasePort returns a base port whose client, Raft, HTTP and gossip
// ports for n nodes (base+i, base+100+i, base+200+i, base+300+i) were all
// free a moment ago on 127.0.0.1 (gossip's on UDP too). They lie below the
// kernel's ephemeral range, as loopback.StablePorts's do: a port in it can
// be taken as the source port of any outgoing connection on the machine
// between this check and the node's bind, or while the test stops the
// cluster and starts it again on the same ports.
func freeBasePort(t *testing.T, n int) int {
	t.Helper()
	lo, hi := 10000, loopback.EphemeralStart()-300-n // base+300+n < the ephemeral range
	if hi <= lo {
		t.Fatalf("the ephemeral range starts at %d: no room below it for %d nodes' ports", loopback.EphemeralStart(), n)
	}
	for range 100 {
		base := lo + rand.IntN(hi-lo)
		free := true
		for i := 1; i <= n && free; i++ {
			for _, port := range []int{base + i, base + 100 + i, base + 200 + i, base + 300 + i} {
				l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
				if err != nil {
					free = false
					break
				}
				l.Close()
				if port > base+300 {
					u, err := net.ListenPacket("udp", "127.0.0.1:"+strconv.Itoa(port))
					if err != nil {
						free = false
						break
					}
					u.Close()
				}
			}
		}
		if free {
			return base
		}
	}
	t.Fatal("no free base port in 100 tries")
	return 0
}

// waitLog waits until the file at path matches re, at most limit, and
// returns the submatches of the last match.
func waitLog(t *testing.T, path string, re *regexp.Regexp, limit time.Duration) []string {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		b, _ := os.ReadFile(path)
		if m := re.FindAllStringSubmatch(string(b), -1); m != nil {
			return m[len(m)-1]
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %q in %s within %v:\n%s", re, path, limit, b)
		}
		time.Sleep(20 * time.Millisecond) // polling a file, bounded by the deadline
	}
}

// gone reports whether no process has pid (a zombie counts as gone).
func gone(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && i+2 < len(s) && s[i+2] == 'Z'
}

// clusterOutput is what `leasehold cluster` printed on stdout.
type clusterOutput struct {
	endpoints []string
	tls       proc.TLSFiles // from the "tls:" line
	metrics   string        // the "metrics:", "console:" and "gossip:" lines, whole
	console   string
	gossip    string
}

var tlsLineRE = regexp.MustCompile(`^tls: ca=(\S+) cert=(\S+) key=(\S+)$`)

// runClusterCmd starts `leasehold cluster` (the binary bin) with 3 nodes in
// dir on base, logging to log, and more flags, and returns it with its
// endpoints and "tls:" line once both are printed. The test's cleanup kills
// it (the nodes die with it, Pdeathsig) and logs its stderr if the test
// failed.
func runClusterCmd(ctx context.Context, t *testing.T, bin, dir string, base int, log string, flags ...string) (*proc.Process, clusterOutput) {
	t.Helper()
	lines := make(chan string, 8)
	p := proc.New("leasehold cluster", bin, append([]string{"cluster", "--nodes", "3", "--dir", dir,
		"--base-port", strconv.Itoa(base), "--log-level", "warn"}, flags...), proc.Options{Log: log, Stdout: func(line string) {
		select {
		case lines <- line:
		default:
		}
	}})
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = p.Kill()
		if t.Failed() {
			b, _ := os.ReadFile(log)
			t.Logf("--- leasehold cluster's stderr ---\n%s", b)
		}
	})
	var out clusterOutput
	for out.endpoints == nil || out.tls.CA == "" || out.metrics == "" || out.console == "" || out.gossip == "" {
		select {
		case line := <-lines:
			if s, ok := strings.CutPrefix(line, "endpoints: "); ok {
				out.endpoints = strings.Split(s, ",")
			} else if m := tlsLineRE.FindStringSubmatch(line); m != nil {
				out.tls = proc.TLSFiles{CA: m[1], Cert: m[2], Key: m[3]}
			} else if strings.HasPrefix(line, "metrics: ") {
				out.metrics = line
			} else if strings.HasPrefix(line, "console: ") {
				out.console = line
			} else if strings.HasPrefix(line, "gossip: ") {
				out.gossip = line
			} else {
				t.Errorf("unexpected line on stdout: %q", line)
			}
		case <-p.Exited():
			t.Fatalf("leasehold cluster exited before printing its endpoints and tls line (got %+v)", out)
		case <-ctx.Done():
			t.Fatalf("no endpoints and tls line within 2 minutes (got %+v)", out)
		}
	}
	return p, out
}

// waitConsoleReaches polls the console's /api/cluster until it lists n
// members and reached every one, at most 30s.
func waitConsoleReaches(ctx context.Context, t *testing.T, hc *http.Client, console string, n int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	var last string
	for {
		var cv struct {
			Members []struct {
				ID        string `json:"id"`
				Reachable bool   `json:"reachable"`
				Error     string `json:"error"`
			} `json:"members"`
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, console+"api/cluster", nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := hc.Do(req)
		if err == nil {
			err = json.NewDecoder(resp.Body).Decode(&cv)
			resp.Body.Close()
		}
		reached := 0
		for _, m := range cv.Members {
			if m.Reachable {
				reached++
			}
		}
		if err == nil && len(cv.Members) == n && reached == n {
			return
		}
		last = fmt.Sprintf("err %v, members %+v", err, cv.Members)
		if time.Now().After(deadline) {
			t.Fatalf("the console did not reach %d members within 30s: %s", n, last)
		}
		time.Sleep(200 * time.Millisecond) // polling over HTTP, bounded by the deadline
	}
}

// TestClusterKeepsRunningWhenANodeDies runs `leasehold cluster` as a real
// process: it serves TLS with the certificates it made in <dir>/tls and
// names the CA and the operator's certificate on its "tls:" line; kill -9
// of one node's PID is reported and the other two keep a leader; SIGUSR1
// restarts the dead node; Ctrl-C (SIGINT) stops every node. Started again
// on the same directory, it uses the same certificates.
func TestClusterKeepsRunningWhenANodeDies(t *testing.T) {
	if testing.Short() {
		t.Skip("builds leasehold and runs a cluster")
	}
	if runtime.GOOS != "linux" {
		t.Skip("reads /proc")
	}
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	bin := filepath.Join(dir, "leasehold")
	if err := proc.Build(ctx, bin, proc.LeaseholdPackage); err != nil {
		t.Fatal(err)
	}
	base := freeBasePort(t, 3)
	log := filepath.Join(dir, "cluster.log")
	data := filepath.Join(dir, "data")
	p, out := runClusterCmd(ctx, t, bin, data, base, log)
	want := proc.TLSFiles{CA: filepath.Join(data, "tls", "ca.pem"), Cert: filepath.Join(data, "tls", "operator-admin.pem"),
		Key: filepath.Join(data, "tls", "operator-admin-key.pem")}
	if out.tls != want {
		t.Errorf("tls line names %+v; want %+v", out.tls, want)
	}
	waitLog(t, log, regexp.MustCompile(`made a CA and certificates in `+regexp.QuoteMeta(filepath.Join(data, "tls"))), time.Second)
	waitLog(t, log, regexp.MustCompile(`for the CLI: export LEASEHOLD_CA=\S+ca.pem LEASEHOLD_CERT=\S+operator-admin.pem LEASEHOLD_KEY=\S+operator-admin-key.pem`), time.Second)
	plain, err := proc.Dial(out.endpoints, proc.Plaintext)
	if err != nil {
		t.Fatal(err)
	}
	if st := plain.Status(ctx, time.Second)[0]; st.Err == nil {
		t.Errorf("a node answered in plain text: %v", st.Status)
	}
	plain.Close()
	admin, err := proc.Dial(out.endpoints, proc.Security{TLS: &out.tls})
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	// The metrics and console URLs, HTTPS with the cluster's certificates.
	wantMetrics := fmt.Sprintf("metrics: https://127.0.0.1:%d/metrics,https://127.0.0.1:%d/metrics,https://127.0.0.1:%d/metrics",
		base+201, base+202, base+203)
	if out.metrics != wantMetrics {
		t.Errorf("got %q; want %q", out.metrics, wantMetrics)
	}
	console, ok := strings.CutPrefix(out.console, "console: ")
	if !ok || !strings.HasPrefix(console, "https://127.0.0.1:") {
		t.Errorf("console line %q", out.console)
	}
	src, err := pki.NewSource(out.tls.Cert, out.tls.Key, out.tls.CA, nil)
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: src.ClientConfig(true, pki.RequireRole(pki.RoleNode))}}
	resp, err := hc.Get(console)
	if err != nil {
		t.Fatalf("GET the console: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("GET %s as the operator: %s", console, resp.Status)
	}
	// The nodes gossip on base+300+i, and the console finds the other
	// nodes' consoles in gossip (no --console-peers): it reaches all three.
	wantGossip := fmt.Sprintf("gossip: 127.0.0.1:%d,127.0.0.1:%d,127.0.0.1:%d", base+301, base+302, base+303)
	if out.gossip != wantGossip {
		t.Errorf("got %q; want %q", out.gossip, wantGossip)
	}
	waitLog(t, log, regexp.MustCompile(`membership: the nodes gossip encrypted with \S+gossip.key and, on an empty --dir, `+
		`bootstrap once 3 of them have met`), time.Second)
	waitConsoleReaches(ctx, t, hc, console, 3)
	pids := map[string]int{}
	for _, id := range []string{"n1", "n2", "n3"} {
		m := waitLog(t, log, regexp.MustCompile(`started `+id+` pid (\d+)`), time.Second)
		pids[id], _ = strconv.Atoi(m[1])
	}

	// kill -9 of n2, leader or not: the other two keep (or elect) one.
	if err := syscall.Kill(pids["n2"], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitLog(t, log, regexp.MustCompile(fmt.Sprintf(`n2 \(pid %d\) exited on its own: signal: killed; see .*n2\.log; `+
		`the other nodes keep running; .kill -USR1 %d. restarts the nodes that are down`, pids["n2"], p.PID())), 10*time.Second)
	wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
	defer wcancel()
	if _, err := admin.WaitLeader(wctx); err != nil {
		t.Fatalf("no leader with n2 dead: %v", err)
	}
	if !p.Running() {
		t.Fatal("leasehold cluster exited when a node died")
	}

	if err := p.Signal(syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	m := waitLog(t, log, regexp.MustCompile(`restarted n2 pid (\d+)`), 10*time.Second)
	pids["n2"], _ = strconv.Atoi(m[1])
	if err := admin.WaitHealthy(wctx); err != nil {
		t.Fatalf("after the restart: %v", err)
	}
	if sts := admin.Status(ctx, time.Second); sts[1].Err != nil || sts[1].Status.GetNodeId() != "n2" {
		t.Fatalf("n2 after the restart: %+v", sts[1])
	}

	if err := p.Signal(os.Interrupt); err != nil { // Ctrl-C
		t.Fatal(err)
	}
	if err := p.Wait(ctx); err != nil {
		t.Fatalf("leasehold cluster after Ctrl-C: %v", err)
	}
	waitLog(t, log, regexp.MustCompile(`stopping the nodes`), time.Second)
	for id, pid := range pids {
		if !gone(pid) {
			t.Errorf("%s (pid %d) still running after leasehold cluster stopped", id, pid)
		}
	}

	// Again on the same directory: the same CA and certificates.
	before := map[string][]byte{}
	for _, f := range []string{want.CA, want.Cert, filepath.Join(data, "tls", "node-n1.pem"), filepath.Join(data, "tls", "client-app.pem")} {
		if before[f], err = os.ReadFile(f); err != nil {
			t.Fatal(err)
		}
	}
	log2 := filepath.Join(dir, "cluster2.log")
	p2, out2 := runClusterCmd(ctx, t, bin, data, base, log2, "--client-inline-limits=false")
	if out2.tls != want {
		t.Errorf("second run's tls line names %+v; want %+v", out2.tls, want)
	}
	// --client-inline-limits=false reached the nodes: the client
	// certificate the cluster made may not define a key inline.
	app := proc.TLSFiles{CA: want.CA, Cert: filepath.Join(data, "tls", "client-app.pem"), Key: filepath.Join(data, "tls", "client-app-key.pem")}
	if _, err := acquireInline(ctx, t, out2.endpoints, app, "cluster-test-absent"); !errors.Is(err, transport.ErrPermissionDenied) {
		t.Errorf("a client's inline limit on an absent key, with --client-inline-limits=false: %v; want PERMISSION_DENIED", err)
	}
	waitLog(t, log2, regexp.MustCompile(`using the certificates in `), time.Second)
	for f, b := range before {
		if now, _ := os.ReadFile(f); !bytes.Equal(now, b) {
			t.Errorf("%s was written again by the second run", f)
		}
	}
	if err := p2.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	if err := p2.Wait(ctx); err != nil {
		t.Fatalf("second leasehold cluster after Ctrl-C: %v", err)
	}
}

// acquireInline asks, as files' certificate, for one token of key with its
// limit inline, on the leader of endpoints, within 20 s.
func acquireInline(ctx context.Context, t *testing.T, endpoints []string, files proc.TLSFiles, key string) (*pb.AcquireResponse, error) {
	t.Helper()
	a, err := proc.Dial(endpoints, proc.Security{TLS: &files})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	req := &pb.AcquireRequest{ClientId: []byte("cluster-test"), Seq: 1, Items: []*pb.AcquireItem{{Key: key, Count: 1,
		Limit: &pb.Limit{Algorithm: pb.Algorithm_TOKEN_BUCKET, Limit: 5, PeriodNs: int64(time.Hour), Burst: 5}}}}
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	return proc.OnLeader(ctx, a, func(ctx context.Context, api pb.LeaseholdClient) (*pb.AcquireResponse, error) {
		return api.Acquire(ctx, req)
	})
}

// TestClusterCouldNotPassClientInlineLimits: `leasehold cluster` had no
// --client-inline-limits (nor any way to give its nodes a serve flag), so
// a local cluster could not refuse clients' inline limits; and arguments
// it did not know were dropped without a word. It passes the flag, with
// serve's default, and the serve flags after "--", to every node.
func TestClusterCouldNotPassClientInlineLimits(t *testing.T) {
	dir := t.TempDir()
	args := func(l proc.Layout) [][]string {
		t.Helper()
		specs, err := l.Specs()
		if err != nil {
			t.Fatal(err)
		}
		var out [][]string
		for _, s := range specs {
			out = append(out, s.Args())
		}
		return out
	}
	has := func(args []string, want ...string) bool {
		for i := range args {
			if slices.Equal(args[i:min(i+len(want), len(args))], want) {
				return true
			}
		}
		return false
	}
	for _, tc := range []struct {
		name string
		args []string
		want []string
	}{
		{"default", nil, []string{"--client-inline-limits=true"}},
		{"refuse", []string{"--client-inline-limits=false"}, []string{"--client-inline-limits=false"}},
		{"serve flags", []string{"--nodes", "2", "--", "--max-in-flight", "64"}, []string{"--client-inline-limits=true", "--max-in-flight", "64"}},
	} {
		l, _, err := clusterLayout(append([]string{"--dir", dir, "--insecure"}, tc.args...), io.Discard)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		for _, a := range args(l) {
			if !has(a, tc.want...) {
				t.Errorf("%s: node args %q lack %q", tc.name, a, tc.want)
			}
		}
	}
	for _, bad := range [][]string{
		{"extra"},                              // dropped before
		{"--", "--data", "elsewhere"},          // cluster's own
		{"--", "--client-inline-limits=false"}, // has its flag
		{"--", "--grpc-addr=127.0.0.1:1"},
		{"--", "-tls-cert", "x.pem"},
		{"--", "--insecure"},
	} {
		if _, _, err := clusterLayout(append([]string{"--dir", dir, "--insecure"}, bad...), io.Discard); err == nil {
			t.Errorf("cluster %q: no error", bad)
		}
	}
}

// TestClusterRefusesWhatItSetsPerNode: a serve flag after "--" that
// names where one node is reached, or its peers, is refused by name.
// Regression: --grpc-advertise and --gossip-advertise went to every node,
// which then all advertised one address, and --peers to every node, each
// refusing a list that did not name it after the cluster had started.
func TestClusterRefusesWhatItSetsPerNode(t *testing.T) {
	dir := t.TempDir()
	for _, serve := range [][]string{
		{"--grpc-advertise", "127.0.0.1:9101"},
		{"--gossip-advertise=127.0.0.1:9401"},
		{"-peers", "n1=127.0.0.1:7201"},
	} {
		name, _ := flagName(serve[0])
		_, _, err := clusterLayout(append([]string{"--dir", dir, "--insecure", "--"}, serve...), io.Discard)
		if err == nil || !strings.Contains(err.Error(), "--"+name+" set by cluster itself") {
			t.Errorf("cluster -- %q: %v; want it refused by name", serve, err)
		}
	}
}

// TestClusterRefusesWhatOnlyOneNodeMayAsk: --non-voter and --replace after
// "--" are refused by name. Regression: they went to every node, and a
// cluster of non-voters, or of replacements that never bootstrap, waited
// for a leader until cluster's --wait ran out.
func TestClusterRefusesWhatOnlyOneNodeMayAsk(t *testing.T) {
	dir := t.TempDir()
	for _, serve := range [][]string{{"--non-voter"}, {"-replace=true"}} {
		name, _ := flagName(serve[0])
		_, _, err := clusterLayout(append([]string{"--dir", dir, "--insecure", "--"}, serve...), io.Discard)
		if err == nil || !strings.Contains(err.Error(), "--"+name+" would apply to every node") {
			t.Errorf("cluster -- %q: %v; want it refused by name", serve, err)
		}
	}
	if _, _, err := clusterLayout([]string{"--dir", dir, "--insecure", "--", "--non-voter=false"}, io.Discard); err != nil {
		t.Errorf("cluster -- --non-voter=false: %v; want it taken (it asks nothing)", err)
	}
}

// TestClusterSaysWhyANodeExited: `leasehold cluster -- --max-in-flight`
// (no value), or a port another process holds, ended with "n1 (pid ...)
// exited on its own: exit status 1; see data/n1.log" and gRPC's "connection
// refused" for every node: the reason was only in the log. The log's last
// line of the node's own now follows.
func TestClusterSaysWhyANodeExited(t *testing.T) {
	log := filepath.Join(t.TempDir(), "n1.log")
	body := "Usage of serve:\n  -bootstrap-expect int\n    \tbootstrap ...\n" +
		"leasehold serve: flag needs an argument: -max-in-flight\n" +
		"--- n1 (pid 6615) exited on its own: exit status 1\n"
	if err := os.WriteFile(log, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	status := exec.Command("false").Run() // an *exec.ExitError: exit status 1
	e := proc.Exit{Name: "n1", PID: 6615, Err: status, Log: log}
	if got, want := logEnds(e), "\n"+log+" ends: leasehold serve: flag needs an argument: -max-in-flight"; got != want {
		t.Errorf("logEnds = %q; want %q", got, want)
	}
	e.Err = nil
	if got := logEnds(e); got != "" {
		t.Errorf("logEnds of a clean exit = %q; want nothing", got)
	}
	killed := exec.Command("sh", "-c", "kill -9 $$").Run()
	e.Err = killed
	if got := logEnds(e); got != "" {
		t.Errorf("logEnds of a node killed by a signal (%v) = %q; want nothing", killed, got)
	}
	e.Err, e.Log = status, filepath.Join(t.TempDir(), "none.log")
	if got := logEnds(e); got != "" {
		t.Errorf("logEnds without a log = %q; want nothing", got)
	}
}
