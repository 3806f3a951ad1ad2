package bench

import (
	"bytes"
	"context"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/leasehold/leasehold/client"
	"github.com/leasehold/leasehold/internal/clustertest"
	"github.com/leasehold/leasehold/internal/loopback"
)

// deadDialer returns SDK options that send every connection of the SDK to
// a loopback port nothing listens on, and give up on a request after
// 200ms: a cluster that cannot answer the SDK, while the bench's own admin
// connections (limits, commit index) reach the node.
func deadDialer(t *testing.T) []client.Option {
	t.Helper()
	ports, err := loopback.FreePorts(1)
	if err != nil {
		t.Fatal(err)
	}
	dead := net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0]))
	dial := func(ctx context.Context, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", dead)
	}
	return []client.Option{client.WithDialOptions(grpc.WithContextDialer(dial)), client.WithRequestTimeout(200 * time.Millisecond)}
}

// TestBenchReportedFailurePolicyRunsAsValid: a run in which the SDK could
// not reach the cluster printed its decisions/s and latency (p50 ≈ 500ns,
// the failure policy's local answer) as Leasehold's, with nothing to say
// that the cluster decided none of them. The run must count what the
// failure policy decided, say NOT VALID, fail CheckValid, and show no
// figure in the tables; under FailOpen (admitting) as under FailClosed
// (refusing, the default).
func TestBenchReportedFailurePolicyRunsAsValid(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a node")
	}
	_, ep := clustertest.Start(t)
	w := Workload{Clients: 2, Keys: 1, Duration: 700 * time.Millisecond, Rate: 100, Per: time.Second, Burst: 20}
	for _, tc := range []struct {
		name   string
		policy client.FailurePolicy
	}{{"closed", client.FailClosed}, {"open", client.FailOpen}} {
		t.Run(tc.name, func(t *testing.T) {
			h := Hooks{SDKOptions: append(deadDialer(t), client.WithFailurePolicy(tc.policy))}
			rep, err := RunLeasehold(context.Background(), []string{ep}, ModeLease, w, h)
			if err != nil {
				t.Fatal(err)
			}
			d := rep.SDK.Decided
			if d.Fallback() == 0 || d.Leased+d.Central+d.ClusterDenied != 0 {
				t.Fatalf("decided by %+v: want only the failure policy (the SDK reached no node)", d)
			}
			if tc.policy == client.FailOpen && d.FallbackAdmitted == 0 || tc.policy == client.FailClosed && d.FallbackDenied == 0 {
				t.Errorf("policy %v: decided by %+v", tc.policy, d)
			}
			if rep.NotValid() == "" {
				t.Fatalf("a run the failure policy decided is valid:\n%s", rep)
			}
			s := rep.String()
			if !strings.Contains(s, "NOT VALID") || !strings.Contains(s, "decided by") {
				t.Errorf("report does not say the run is not valid, or who decided:\n%s", s)
			}
			if err := CheckValid([]Report{rep}); err == nil || !strings.Contains(err.Error(), rep.Name) {
				t.Errorf("CheckValid = %v; want an error naming %q", err, rep.Name)
			}
			var tab bytes.Buffer
			if err := WriteTable(&tab, []Report{rep}); err != nil {
				t.Fatal(err)
			}
			row := strings.Split(strings.TrimSpace(tab.String()), "\n")[1]
			if !strings.Contains(row, "NOT VALID") || strings.Contains(row, Count(rep.DecisionsPerSecond())) {
				t.Errorf("table row %q: want it marked and without the run's decisions/s (%s)", row, Count(rep.DecisionsPerSecond()))
			}
		})
	}

	// The same run against the node itself is valid, and counts the
	// decisions by where they came from.
	rep, err := RunLeasehold(context.Background(), []string{ep}, ModeLease, w, Hooks{})
	if err != nil {
		t.Fatal(err)
	}
	if why := rep.NotValid(); why != "" {
		t.Fatalf("a run against a live node is not valid: %s\n%s", why, rep)
	}
	if d := rep.SDK.Decided; d.Leased+d.Central == 0 || d.Leased+d.Central+d.FallbackAdmitted > rep.Admitted {
		t.Errorf("decided by %+v for %d admitted: want the admissions counted by source", d, rep.Admitted)
	}
}

// TestNotValidMarksEveryTable: a report the failure policy decided in part
// is marked in each table, shows "-" for its figures and enters no ratio.
func TestNotValidMarksEveryTable(t *testing.T) {
	mk := func(name string, dps int64, leasehold bool, fallback int64) Report {
		r := Report{Name: name, Leasehold: leasehold, Result: Result{Decisions: dps, Admitted: 10, Elapsed: time.Second,
			Latency: NewHistogram()}}
		r.Latency.Record(500 * time.Nanosecond)
		r.SDK.Decided.FallbackDenied = fallback
		return r
	}
	var b bytes.Buffer
	err := WriteTable(&b, []Report{mk("redis+lua", 50_000, false, 0), mk("leasehold central", 25_000, true, 0),
		mk("leasehold lease", 9_000_000, true, 1)})
	if err != nil {
		t.Fatal(err)
	}
	s := b.String()
	if !strings.Contains(s, "leasehold lease"+notValidMark) || strings.Contains(s, "9M") || strings.Contains(s, "ratio leasehold/redis") {
		t.Errorf("table:\n%s\nwant the lease row marked, without its 9M/s, and no ratio line built on it", s)
	}
	mark := mk("leasehold lease", 9_000_000, true, 1)
	mark.Name = ManyKeysName(ManyKeysCase{Name: "c"}, "leasehold")
	b.Reset()
	if err := WriteManyKeysTable(&b, []Report{mark}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), notValidMark) || strings.Contains(b.String(), "9M") {
		t.Errorf("many-keys table:\n%s\nwant the row marked and without its figures", b.String())
	}
	win := mk("leasehold window", 9_000_000, true, 1)
	win.Window = &WindowEnvelope{Limit: 10, Window: time.Second}
	b.Reset()
	if err := WriteWindowTable(&b, []Report{win}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), notValidMark) || strings.Contains(b.String(), "9M") {
		t.Errorf("window table:\n%s\nwant the row marked and without its figures", b.String())
	}
	if mk("redis+lua", 1, false, 5).NotValid() != "" {
		t.Error("a Redis run is not valid: only Leasehold runs have a failure policy")
	}
}

// TestNotValidSaysTheClusterWasFull: a run whose calls the failure policy
// decided because the cluster refused new keys or clients as full says so
// and names the caps' flags. Regression: it said the cluster did not
// answer, which sent its reader looking for a network fault.
func TestNotValidSaysTheClusterWasFull(t *testing.T) {
	r := Report{Name: "leasehold lease", Leasehold: true, Result: Result{Decisions: 10}}
	r.SDK.Decided.FallbackDenied = 10
	r.SDK.AcquireFull = 3
	why := r.NotValid()
	if !strings.Contains(why, "full") || !strings.Contains(why, "--max-keys") || !strings.Contains(why, "--max-sessions") ||
		strings.Contains(why, "did not answer") {
		t.Errorf("NotValid = %q, want it to say the cluster was full and name --max-keys and --max-sessions", why)
	}
}

// TestNotValidSaysBothOutageAndFull: a run whose Acquires went both
// unanswered and refused as full says both, with their counts. Regression:
// it said only that the cluster was full, hiding the outage.
func TestNotValidSaysBothOutageAndFull(t *testing.T) {
	r := Report{Name: "leasehold lease", Leasehold: true, Result: Result{Decisions: 10}}
	r.SDK.Decided.FallbackDenied = 10
	r.SDK.AcquireFailed, r.SDK.AcquireFull = 4, 3
	why := r.NotValid()
	if !strings.Contains(why, "did not answer (4 acquires)") || !strings.Contains(why, "was full (3 acquires refused") ||
		!strings.Contains(why, "--max-keys") {
		t.Errorf("NotValid = %q, want it to say the cluster did not answer 4 acquires and refused 3 as full", why)
	}
}

// TestReportCountsFullRefusals: the report's SDK line counts the Acquires
// refused as full apart. Regression: "N acquires (d denied, f unanswered)"
// left them out, so a reader took them for grants.
func TestReportCountsFullRefusals(t *testing.T) {
	r := Report{Name: "leasehold lease", Leasehold: true, Result: Result{Decisions: 10, Elapsed: time.Second, Latency: NewHistogram()}}
	r.SDK.Acquires, r.SDK.AcquireDenied, r.SDK.AcquireFull, r.SDK.AcquireFailed = 10, 1, 3, 2
	if s := r.String(); !strings.Contains(s, "10 acquires (1 denied, 3 refused as full, 2 unanswered)") {
		t.Errorf("report:\n%s\nwant the acquires line to count the 3 refused as full", s)
	}
}
