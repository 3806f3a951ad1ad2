package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/leasehold/leasehold/client"
	"github.com/leasehold/leasehold/client/promcollector"
	"github.com/leasehold/leasehold/internal/pki"
	"github.com/leasehold/leasehold/internal/pki/pkitest"
	"github.com/leasehold/leasehold/internal/proc"
	"github.com/leasehold/leasehold/internal/proc/proctest"
)

// withHTTP gives every node an HTTP listener (metrics, health, console) on
// a free port, and tells each the others' (proc.Layout.HTTP).
func withHTTP(l *proc.Layout) { l.HTTP = true }

// httpClient returns a client for c's nodes' HTTP listeners and their
// scheme: over TLS, one presenting a client certificate of c's CA (as
// Prometheus would); plain otherwise.
func httpClient(t testing.TB, c *proc.Cluster) (*http.Client, string) {
	t.Helper()
	if c.Certs() == nil {
		return &http.Client{Timeout: 5 * time.Second}, "http"
	}
	f := proctest.ClientTLS(t, c, "prometheus")
	src, err := pki.NewSource(f.Cert, f.Key, f.CA, nil)
	if err != nil {
		t.Fatal(err)
	}
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: src.ClientConfig(true, pki.RequireRole(pki.RoleNode))}}, "https"
}

// probeClient returns a client for /healthz and /readyz as a load balancer
// has one: no certificate of its own, the CA's trusted.
func probeClient(t testing.TB, c *proc.Cluster) (*http.Client, string) {
	t.Helper()
	if c.Certs() == nil {
		return &http.Client{Timeout: 5 * time.Second}, "http"
	}
	pool := x509.NewCertPool()
	b, err := os.ReadFile(c.Certs().CAFile())
	if err != nil || !pool.AppendCertsFromPEM(b) {
		t.Fatalf("read the CA: %v", err)
	}
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}}, "https"
}

// httpGet fetches url with hc and returns its status and body.
func httpGet(hc *http.Client, url string) (int, string, error) {
	resp, err := hc.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	return resp.StatusCode, string(b), err
}

// scrape fetches a node's /metrics and parses it.
func scrape(t testing.TB, c *proc.Cluster, n *proc.Node) map[string]*dto.MetricFamily {
	t.Helper()
	hc, scheme := httpClient(t, c)
	code, body, err := httpGet(hc, scheme+"://"+n.HTTPAddr()+"/metrics")
	if err != nil || code != http.StatusOK {
		t.Fatalf("scrape %s: %d %v", n.ID(), code, err)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("parse %s's metrics: %v", n.ID(), err)
	}
	return mfs
}

// sample returns the value of name{labels} in mfs (a counter's or gauge's
// value, a summary's or histogram's count), summed over the series that
// match; ok is false if none does.
func sample(mfs map[string]*dto.MetricFamily, name string, labels map[string]string) (v float64, ok bool) {
	mf := mfs[name]
	if mf == nil {
		return 0, false
	}
next:
	for _, m := range mf.GetMetric() {
		for k, want := range labels {
			found := false
			for _, l := range m.GetLabel() {
				if l.GetName() == k && l.GetValue() == want {
					found = true
				}
			}
			if !found {
				continue next
			}
		}
		ok = true
		switch {
		case m.Counter != nil:
			v += m.GetCounter().GetValue()
		case m.Gauge != nil:
			v += m.GetGauge().GetValue()
		case m.Summary != nil:
			v += float64(m.GetSummary().GetSampleCount())
		case m.Histogram != nil:
			v += float64(m.GetHistogram().GetSampleCount())
		case m.Untyped != nil:
			v += m.GetUntyped().GetValue()
		}
	}
	return v, ok
}

// benchCounts are the SDK's own counts that `leasehold bench` prints.
type benchCounts struct {
	acquires, denied, full, unanswered, releases, granted, givenBack int64
}

var benchSDKLine = regexp.MustCompile(`sdk requests\s+(\d+) acquires \((\d+) denied, (\d+) refused as full, (\d+) unanswered\), (\d+) releases; (\d+) tokens granted, (\d+) given back`)

// runBench runs `leasehold bench` against c and returns the SDK's counts
// it prints.
func runBench(t testing.TB, c *procCluster, args ...string) benchCounts {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	args = append([]string{"bench", "--endpoints", strings.Join(c.Endpoints(), ",")}, args...)
	if c.Certs() == nil {
		args = append(args, "--insecure")
	} else {
		op, err := c.Certs().Operator(proc.AdminName)
		if err != nil {
			t.Fatal(err)
		}
		args = append(args, "--ca", op.CA, "--cert", op.Cert, "--key", op.Key)
	}
	out, err := exec.CommandContext(ctx, proctest.Binary(t), args...).CombinedOutput()
	if err != nil {
		t.Fatalf("leasehold %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	m := benchSDKLine.FindStringSubmatch(string(out))
	if m == nil {
		t.Fatalf("no sdk requests line in leasehold bench's output:\n%s", out)
	}
	var n [7]int64
	for i := range n {
		n[i], _ = strconv.ParseInt(m[i+1], 10, 64)
	}
	return benchCounts{n[0], n[1], n[2], n[3], n[4], n[5], n[6]}
}

// TestMetricsFollowABenchRun scrapes every node of a real cluster before and
// after a `leasehold bench` run: the decisions and tokens each node counts
// move by what the SDK says it asked for and got, and raft's own metrics
// are there.
func TestMetricsFollowABenchRun(t *testing.T) {
	c := startCluster(t, 3, withHTTP)
	c.waitHealthy(30 * time.Second)
	nodes := c.Nodes()
	before := map[string]map[string]*dto.MetricFamily{}
	for _, n := range nodes {
		before[n.ID()] = scrape(t, c.Cluster, n)
	}
	got := runBench(t, c, "--mode", "lease", "--clients", "4", "--keys", "2", "--duration", "3s", "--rate", "500", "--burst", "500")
	if got.unanswered != 0 || got.full != 0 {
		t.Fatalf("bench: %d acquires unanswered, %d refused as full; the counts cannot be compared", got.unanswered, got.full)
	}
	t.Logf("bench: %+v", got)

	// Every node applies every command; wait until each has counted the
	// last release.
	want := map[string]float64{
		"granted":   float64(got.acquires - got.denied),
		"denied":    float64(got.denied),
		"tokens":    float64(got.granted),
		"givenBack": float64(got.givenBack),
	}
	delta := func(after map[string]*dto.MetricFamily, id, name string, labels map[string]string) float64 {
		a, _ := sample(after, name, labels)
		b, _ := sample(before[id], name, labels)
		return a - b
	}
	for _, n := range nodes {
		var after map[string]*dto.MetricFamily
		poll(30*time.Second, func() bool {
			after = scrape(t, c.Cluster, n)
			return delta(after, n.ID(), "leasehold_tokens_released_total", nil) >= want["givenBack"] &&
				delta(after, n.ID(), "leasehold_decisions_total", map[string]string{"result": "granted"}) >= want["granted"]
		})
		for _, check := range []struct {
			what, name string
			labels     map[string]string
			want       float64
		}{
			{"granted decisions", "leasehold_decisions_total", map[string]string{"result": "granted"}, want["granted"]},
			{"denied decisions", "leasehold_decisions_total", map[string]string{"result": "denied"}, want["denied"]},
			{"tokens granted", "leasehold_tokens_granted_total", nil, want["tokens"]},
			{"tokens given back", "leasehold_tokens_released_total", nil, want["givenBack"]},
			{"acquires applied", "leasehold_commands_applied_total", map[string]string{"command": "acquire"}, float64(got.acquires)},
			{"releases applied", "leasehold_commands_applied_total", map[string]string{"command": "release"}, float64(got.releases)},
		} {
			if d := delta(after, n.ID(), check.name, check.labels); d != check.want {
				t.Errorf("%s: %s (%s%v) moved by %v; the bench's SDK says %v", n.ID(), check.what, check.name, check.labels, d, check.want)
			}
		}
		for _, name := range []string{"leasehold_apply_seconds", "leasehold_raft_fsm_applyBatch_seconds"} {
			if d := delta(after, n.ID(), name, nil); d <= 0 {
				t.Errorf("%s: %s did not move (%v)", n.ID(), name, d)
			}
		}
		for _, name := range []string{"leasehold_raft_commitTime_seconds", "leasehold_raft_leader_lastContact_seconds",
			"leasehold_raft_state_leader", "leasehold_raft_peers", "leasehold_keys", "leasehold_leases", "leasehold_sessions",
			"leasehold_snapshot_persist_seconds", "leasehold_disk_ok", "leasehold_requests_shed_total",
			"leasehold_permission_denied_total", "leasehold_disk_errors_total", "go_goroutines", "process_open_fds"} {
			if _, ok := sample(after, name, nil); !ok && name != "leasehold_disk_errors_total" {
				t.Errorf("%s: no %s", n.ID(), name)
			}
		}
		if v, _ := sample(after, "leasehold_ready", nil); v != 1 {
			t.Errorf("%s: leasehold_ready = %v", n.ID(), v)
		}
		checkBuildAndCertMetrics(t, c, n, after)
	}
	// Raft's: the leader replicated and committed what the bench wrote.
	leader := c.waitLeader(10 * time.Second)
	after := scrape(t, c.Cluster, leader)
	// Every metric the Grafana dashboard queries is one a node exports.
	exported := map[string]bool{}
	for _, n := range nodes {
		for name := range scrape(t, c.Cluster, n) {
			exported[name] = true
		}
	}
	// and the SDK's panels query what client/promcollector exports.
	for name := range sdkMetricNames(t) {
		exported[name] = true
	}
	checkDashboard(t, filepath.Join("..", "..", "docs", "grafana", "leasehold.json"), exported)
	// and every metric the README's Monitoring section lists is exported.
	readme, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range readmeMetricsMissing(string(readme), exported) {
		t.Errorf("README, Monitoring: %s is exported by no node and not by the SDK's collector", name)
	}
	for _, name := range []string{"leasehold_raft_commitTime_seconds", "leasehold_raft_replication_appendEntries_rpc_seconds",
		"leasehold_commit_seconds", "leasehold_batch_commands", "leasehold_queue_seconds"} {
		if d := delta(after, leader.ID(), name, nil); d <= 0 {
			t.Errorf("leader %s: %s did not move (%v)", leader.ID(), name, d)
		}
	}
}

// checkBuildAndCertMetrics fails t unless n's metrics mfs name the build
// that `leasehold version` prints, and the expiry of n's certificate and
// of the cluster's CA as their files say.
func checkBuildAndCertMetrics(t *testing.T, c *procCluster, n *proc.Node, mfs map[string]*dto.MetricFamily) {
	t.Helper()
	out, err := exec.Command(proctest.Binary(t), "version").Output()
	if err != nil {
		t.Fatalf("leasehold version: %v", err)
	}
	version, _, _ := strings.Cut(strings.TrimPrefix(string(out), "leasehold "), "\n")
	if v, ok := sample(mfs, "leasehold_build_info", map[string]string{"version": version, "goversion": runtime.Version()}); v != 1 {
		t.Errorf("%s: leasehold_build_info{version=%q,goversion=%q} = %v (found %v); want 1", n.ID(), version, runtime.Version(), v, ok)
	}
	files, err := c.Certs().Node(n.ID())
	if err != nil {
		t.Fatal(err)
	}
	for cert, file := range map[string]string{"node": files.Cert, "ca": files.CA} {
		want := float64(pkitest.NotAfter(t, file).Unix())
		if v, ok := sample(mfs, "leasehold_tls_certificate_expiry_timestamp_seconds", map[string]string{"cert": cert}); v != want {
			t.Errorf("%s: leasehold_tls_certificate_expiry_timestamp_seconds{cert=%q} = %v (found %v); want %v, %s's NotAfter",
				n.ID(), cert, v, ok, want, file)
		}
	}
}

const http200 = http.StatusOK

// startSpecs starts a cluster laid out by l, after edit has changed its
// specs (a node's data directory elsewhere), as proctest.StartCluster
// does, and waits for a leader; the test's cleanup kills the nodes.
func startSpecs(t *testing.T, l proc.Layout, edit func([]proc.NodeSpec)) *proc.Cluster {
	t.Helper()
	specs, err := l.Specs()
	if err != nil {
		t.Fatal(err)
	}
	edit(specs)
	certs, err := l.Certs()
	if err != nil {
		t.Fatal(err)
	}
	c, err := proc.NewCluster(proc.ClusterConfig{Binary: proctest.Binary(t), Nodes: specs, Certs: certs, Insecure: l.Insecure})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.KillAll(); err != nil {
			t.Error(err)
		}
		c.Close()
		for _, e := range c.UnexpectedExits() {
			t.Errorf("node %s", e)
		}
		if t.Failed() {
			for _, n := range c.Nodes() {
				b, _ := os.ReadFile(n.LogPath())
				t.Logf("--- %s log (last 3000 bytes) ---\n%s", n.ID(), proctest.Tail(b, 3000))
			}
		}
	})
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	proctest.WaitLeader(t, c, proctest.StartTimeout)
	return c
}

// metricName finds the metric names in a PromQL expression.
var metricName = regexp.MustCompile(`\b(?:leasehold|process|go)_[A-Za-z0-9_]+`)

// checkDashboard fails t if a query of the Grafana dashboard at path names
// a metric that is not exported (a histogram's _bucket, _sum and _count
// count as its family's).
// sdkMetricNames returns the names of the metrics client/promcollector
// describes (its Describe needs no connection: Dial is lazy).
func sdkMetricNames(t *testing.T) map[string]bool {
	t.Helper()
	c, err := client.Dial(t.Context(), []string{"127.0.0.1:1"}, client.WithInsecure(),
		client.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	col, err := promcollector.New(c, promcollector.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan *prometheus.Desc)
	go func() { col.Describe(ch); close(ch) }()
	fqName := regexp.MustCompile(`fqName: "([^"]+)"`)
	names := map[string]bool{}
	for d := range ch {
		if m := fqName.FindStringSubmatch(d.String()); m != nil {
			names[m[1]] = true
		}
	}
	if !names["leasehold_client_admitted_tokens_total"] {
		t.Fatalf("the collector's descriptions name %v; is leasehold_client_admitted_tokens_total gone?", names)
	}
	return names
}

func checkDashboard(t *testing.T, path string, exported map[string]bool) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	queries := 0
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			queries++
			for _, name := range metricName.FindAllString(tg.Expr, -1) {
				base := name
				for _, suffix := range []string{"_bucket", "_sum", "_count"} {
					if trimmed, ok := strings.CutSuffix(name, suffix); ok && exported[trimmed] {
						base = trimmed
					}
				}
				if !exported[base] {
					t.Errorf("dashboard panel %q queries %s, which no node exports", p.Title, name)
				}
			}
		}
	}
	if queries < 20 {
		t.Errorf("dashboard has %d queries; did it parse?", queries)
	}
}

// readmeMetricsMissing returns the metrics that the README's Monitoring
// section names in its inline code and that exported lacks. A name is
// expanded as the README writes it: braces after "_" list alternatives
// (leasehold_snapshot_{capture,persist,restore}_seconds), braces after a
// name list its labels (leasehold_decisions_total{mode,result}), and a
// trailing "_*" stands for any name with that prefix. A histogram is
// exported as its family's name.
func readmeMetricsMissing(readme string, exported map[string]bool) []string {
	start := strings.Index(readme, "\n## Monitoring\n")
	end := strings.Index(readme, "\n## Console\n")
	if start < 0 || end < start {
		return []string{`(no "## Monitoring" section before "## Console")`}
	}
	var missing []string
	names := 0
	for _, m := range regexp.MustCompile("`((?:leasehold|go|process)_[^`]*)`").FindAllStringSubmatch(readme[start:end], -1) {
		for _, name := range expandMetric(m[1]) {
			names++
			if prefix, ok := strings.CutSuffix(name, "*"); ok {
				found := false
				for e := range exported {
					if strings.HasPrefix(e, prefix) && e != prefix {
						found = true
						break
					}
				}
				if !found {
					missing = append(missing, name)
				}
				continue
			}
			if !exported[name] {
				missing = append(missing, name)
			}
		}
	}
	if names < 40 {
		missing = append(missing, fmt.Sprintf("(only %d names found in the Monitoring section: did the parsing break?)", names))
	}
	return missing
}

// expandMetric expands one name as readmeMetricsMissing describes.
func expandMetric(s string) []string {
	i := strings.IndexByte(s, '{')
	if i < 0 {
		return []string{s}
	}
	j := strings.IndexByte(s[i:], '}')
	if j < 0 {
		return []string{s}
	}
	j += i
	if i == 0 || s[i-1] != '_' {
		return expandMetric(s[:i] + s[j+1:]) // labels
	}
	var out []string
	for alt := range strings.SplitSeq(s[i+1:j], ",") {
		out = append(out, expandMetric(s[:i]+alt+s[j+1:])...)
	}
	return out
}

// TestReadmeMetricsParse: the README's ways of writing names expand as
// meant, and a name no node exports is reported.
func TestReadmeMetricsParse(t *testing.T) {
	for in, want := range map[string][]string{
		"leasehold_decisions_total{mode,result}":                        {"leasehold_decisions_total"},
		"leasehold_snapshot_{capture,persist}_seconds":                  {"leasehold_snapshot_capture_seconds", "leasehold_snapshot_persist_seconds"},
		"leasehold_raft_{term,commit_index}":                            {"leasehold_raft_term", "leasehold_raft_commit_index"},
		"leasehold_client_key_{state,fallback_seconds}{key}":            {"leasehold_client_key_state", "leasehold_client_key_fallback_seconds"},
		"leasehold_raft_replication_appendEntries_rpc_seconds{peer_id}": {"leasehold_raft_replication_appendEntries_rpc_seconds"},
	} {
		if got := expandMetric(in); !slices.Equal(got, want) {
			t.Errorf("expandMetric(%q) = %q; want %q", in, got, want)
		}
	}
	readme := "\n## Monitoring\n| `leasehold_keys`, `leasehold_kyes` | `leasehold_raft_*` |\n" +
		strings.Repeat("`leasehold_keys` ", 40) + "\n## Console\n"
	exported := map[string]bool{"leasehold_keys": true, "leasehold_raft_term": true}
	if got := readmeMetricsMissing(readme, exported); !slices.Equal(got, []string{"leasehold_kyes"}) {
		t.Errorf("missing = %q; want [leasehold_kyes]", got)
	}
}

// poll calls cond every 100ms until it holds, for at most limit, and
// reports whether it held.
func poll(limit time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(limit)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		<-tick.C
	}
	return true
}
