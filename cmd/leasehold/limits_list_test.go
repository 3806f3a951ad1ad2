package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/leasehold/leasehold/internal/clustertest"
	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

// limitsOut runs `leasehold limits args...` against endpoint in plain text
// and returns what it printed, failing the test on an error.
func limitsOut(t *testing.T, endpoint string, args ...string) string {
	t.Helper()
	var out strings.Builder
	args = append([]string{args[0], "--endpoints", endpoint, "--insecure"}, args[1:]...)
	if err := runLimits(t.Context(), args, &out); err != nil {
		t.Fatalf("limits %s: %v", strings.Join(args, " "), err)
	}
	return out.String()
}

// An operator exports the limits they set (`limits list --pinned`), loses
// them, and restores them with `limits apply`: the cluster then lists
// exactly what it listed before, and applying the file again changes
// nothing. A key a client's acquire defined is listed, and not exported.
func TestLimitsListThenApplyRestoresThem(t *testing.T) {
	node, endpoint := clustertest.Start(t)
	limitsOut(t, endpoint, "set", "--limit", "200000", "--per", "1m", "--max-debt", "50000", "openai:gpt-4.1/input-tokens")
	limitsOut(t, endpoint, "set", "--algorithm", "sliding-window", "--limit", "60", "--per", "1m", "--slots", "12", "acme/requests")
	limitsOut(t, endpoint, "set", "--algorithm", "concurrency", "--limit", "8", "--max-lease", "30s", "acme/in-flight")
	acq := &pb.AcquireRequest{ClientId: []byte("app"), Seq: 1, Items: []*pb.AcquireItem{{Key: "acme/defined-by-a-client", Count: 1,
		Limit: &pb.Limit{Algorithm: pb.Algorithm_TOKEN_BUCKET, Limit: 10, PeriodNs: 1e9}}}}
	if resp, err := node.Acquire(t.Context(), acq); err != nil || !resp.GetAllowed() {
		t.Fatalf("acquire = %v, %v", resp, err)
	}

	all := limitsOut(t, endpoint, "list")
	if n := strings.Count(all, "\n"); n != 4 || !strings.Contains(all, `"key":"acme/defined-by-a-client"`) {
		t.Fatalf("limits list printed %d lines, want the 4 keys:\n%s", n, all)
	}
	exported := limitsOut(t, endpoint, "list", "--pinned")
	if strings.Count(exported, "\n") != 3 || strings.Contains(exported, "defined-by-a-client") {
		t.Fatalf("limits list --pinned printed, want the 3 keys set:\n%s", exported)
	}
	if got := limitsOut(t, endpoint, "list", "--prefix", "acme/", "--page-size", "1"); strings.Count(got, "\n") != 3 {
		t.Errorf("limits list --prefix acme/ --page-size 1 printed, want the 3 acme/ keys in 3 pages:\n%s", got)
	}
	file := filepath.Join(t.TempDir(), "limits.jsonl")
	if err := os.WriteFile(file, []byte(exported), 0o600); err != nil {
		t.Fatal(err)
	}

	for _, k := range []string{"openai:gpt-4.1/input-tokens", "acme/requests", "acme/in-flight"} {
		limitsOut(t, endpoint, "delete", k)
	}
	if got := limitsOut(t, endpoint, "list", "--pinned"); got != "" {
		t.Fatalf("limits list --pinned after deleting them printed:\n%s", got)
	}
	if got := limitsOut(t, endpoint, "apply", file); !strings.HasSuffix(got, "3 set, 0 unchanged\n") {
		t.Errorf("limits apply printed:\n%s\nwant 3 set", got)
	}
	if got := limitsOut(t, endpoint, "list", "--pinned"); got != exported {
		t.Errorf("after apply, limits list --pinned printed\n%s\nwant what it printed before\n%s", got, exported)
	}
	if got := limitsOut(t, endpoint, "apply", file); !strings.HasSuffix(got, "0 set, 3 unchanged\n") {
		t.Errorf("limits apply again printed:\n%s\nwant 3 unchanged", got)
	}

	// Written by hand: a byte-order mark, a comment, the defaults left out
	// (burst, slots, max_lease), flags after the file. Applied twice, the
	// second finds each as the cluster holds it (the review saw "set" on
	// every run, a Raft write each, as the defaults were compared unfilled).
	hand := "\ufeff# hand-written\n" +
		`{"key":"hand/bucket","algorithm":"token-bucket","limit":100,"per":"1m"}` + "\r\n" +
		`{"key":"hand/window","algorithm":"sliding-window","limit":60,"per":"1m"}` + "\n"
	if err := os.WriteFile(file, []byte(hand), 0o600); err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	if err := runLimits(t.Context(), []string{"apply", file, "--endpoints", endpoint, "--insecure"}, &out); err != nil ||
		!strings.HasSuffix(out.String(), "2 set, 0 unchanged\n") {
		t.Errorf("limits apply FILE --flags = %v, printed:\n%s\nwant 2 set", err, out.String())
	}
	if got := limitsOut(t, endpoint, "apply", file); !strings.HasSuffix(got, "0 set, 2 unchanged\n") {
		t.Errorf("limits apply of a file with the defaults left out, again, printed:\n%s\nwant 2 unchanged", got)
	}
}

// A file with a line the cluster would refuse, that does not parse, or that
// names a key twice is refused whole, naming the line, before anything is
// sent: no limit of it is set.
func TestLimitsApplyChecksEveryLineFirst(t *testing.T) {
	_, endpoint := clustertest.Start(t)
	good := `{"key":"a","algorithm":"TOKEN_BUCKET","limit":10,"per":"1s"}` + "\n"
	for _, tc := range []struct{ name, line, want string }{
		{"bad duration", `{"key":"b","algorithm":"token-bucket","limit":10,"per":"soon"}`, `:2 (key "b"): per "soon"`},
		{"unknown field", `{"key":"b","algorithm":"token-bucket","limit":10,"rate":5}`, `:2: json: unknown field "rate"`},
		{"zero limit", `{"key":"b","algorithm":"token-bucket","limit":0,"per":"1s"}`, `:2 (key "b"): limit: `},
		{"max lease too long", `{"key":"b","algorithm":"token-bucket","limit":9,"per":"1s","max_lease":"2m"}`, `:2 (key "b"): max_lease: `},
		{"field the algorithm drops", `{"key":"b","algorithm":"SLIDING_WINDOW","limit":10,"per":"1s","burst":20}`, `burst: a sliding-window limit does not use it`},
		{"key twice", `{"key":"a","algorithm":"token-bucket","limit":20,"per":"1s"}`, `:2: key "a" again (first on line 1)`},
		{"empty key", `{"algorithm":"token-bucket","limit":20,"per":"1s"}`, `:2 (key ""): invalid key`},
		// An operator's review: a second object on the line was dropped
		// unsaid, and a client's limit (pinned false) was pinned for good.
		{"two objects on a line", `{"key":"b","algorithm":"token-bucket","limit":10,"per":"1s"} {"key":"c","algorithm":"token-bucket","limit":10,"per":"1s"}`, `:2: more after the object`},
		{"junk after the object", `{"key":"b","algorithm":"token-bucket","limit":10,"per":"1s"}, junk`, `:2: more after the object`},
		{"a client's limit", `{"key":"b","algorithm":"token-bucket","limit":10,"per":"1s","pinned":false}`, `:2 (key "b"): pinned false: a client's acquire set this limit`},
		{"wrong type", `{"key":"b","algorithm":"token-bucket","limit":"10"}`, `:2: limit: want a whole number, not a JSON string`},
		{"an array", `[{"key":"b","algorithm":"token-bucket","limit":10}]`, `(one JSON object per line`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			file := filepath.Join(t.TempDir(), "limits.jsonl")
			if err := os.WriteFile(file, []byte(good+tc.line+"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			var out strings.Builder
			err := runLimits(t.Context(), []string{"apply", "--endpoints", endpoint, "--insecure", file}, &out)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("limits apply = %v; want an error containing %q", err, tc.want)
			}
			if got := limitsOut(t, endpoint, "list"); got != "" {
				t.Errorf("a refused file set limits:\n%s", got)
			}
		})
	}
}
