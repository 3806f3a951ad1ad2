package main

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/leasehold/leasehold/cluster"
	"github.com/leasehold/leasehold/internal/clustertest"
	"github.com/leasehold/leasehold/transport"
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

// applyOut runs `leasehold limits apply` of text (written to a file) with
// flags against endpoint and returns what it printed and its error.
func applyOut(t *testing.T, endpoint, text string, flags ...string) (string, error) {
	t.Helper()
	file := filepath.Join(t.TempDir(), "limits.jsonl")
	if err := os.WriteFile(file, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	args := append([]string{"apply", "--endpoints", endpoint, "--insecure"}, flags...)
	err := runLimits(t.Context(), append(args, file), &out)
	return out.String(), err
}

// acquireDefines has a client define key's limit by its acquire: an
// unpinned limit, which prune must never delete.
func acquireDefines(t *testing.T, node *cluster.Node, key string) {
	t.Helper()
	if resp, err := node.Acquire(t.Context(), definingAcquire(key)); err != nil || !resp.GetAllowed() {
		t.Fatalf("acquire %s = %v, %v", key, resp, err)
	}
}

// definingAcquire is an acquire of one token of key that defines its limit:
// 10 an hour, so that the bucket refills in 6 minutes, not in a moment after
// which the idle sweep may forget the key (under -race, 1 in 3 runs did).
func definingAcquire(key string) *pb.AcquireRequest {
	return &pb.AcquireRequest{ClientId: []byte("app-" + key), Seq: 1, Items: []*pb.AcquireItem{{Key: key, Count: 1,
		Limit: &pb.Limit{Algorithm: pb.Algorithm_TOKEN_BUCKET, Limit: 10, PeriodNs: int64(time.Hour)}}}}
}

// keysListed returns the keys of `limits list` output, in order.
func keysListed(t *testing.T, out string) []string {
	t.Helper()
	var keys []string
	for line := range strings.Lines(out) {
		var l struct{ Key string }
		if err := json.Unmarshal([]byte(line), &l); err != nil {
			t.Fatalf("limits list printed %q: %v", line, err)
		}
		keys = append(keys, l.Key)
	}
	return keys
}

// `limits apply --prune` leaves the cluster holding exactly the file's
// pinned limits: it deletes the pinned keys the file does not name, over
// more than one page of the list, and keeps every limit a client's acquire
// defined. --dry-run prints the same plan and changes nothing.
func TestLimitsApplyPruneDeletesExactlyTheExtraPinnedKeys(t *testing.T) {
	defer func(p int32) { pruneListPage = p }(pruneListPage)
	pruneListPage = 2 // the 5 pinned keys take 3 pages
	node, endpoint := clustertest.Start(t)
	for _, k := range []string{"keep", "old/a", "old/b", "old/c", "retune"} {
		limitsOut(t, endpoint, "set", "--limit", "10", "--per", "1s", k)
	}
	acquireDefines(t, node, "client/x")
	acquireDefines(t, node, "old/by-a-client")
	file := `{"key":"keep","algorithm":"token-bucket","limit":10,"per":"1s"}` + "\n" +
		`{"key":"new","algorithm":"token-bucket","limit":5,"per":"1s"}` + "\n" +
		`{"key":"retune","algorithm":"token-bucket","limit":20,"per":"1s"}` + "\n"
	before := limitsOut(t, endpoint, "list")

	out, err := applyOut(t, endpoint, file, "--prune", "--dry-run")
	want := "unchanged keep\nwould set new\nwould set retune\nwould delete old/a\nwould delete old/b\nwould delete old/c\n" +
		"dry run, nothing changed: 2 to set, 1 unchanged, 3 to delete\n"
	if err != nil || out != want {
		t.Errorf("limits apply --prune --dry-run = %v, printed\n%s\nwant\n%s", err, out, want)
	}
	if got := limitsOut(t, endpoint, "list"); got != before {
		t.Fatalf("--dry-run changed the limits: list printed\n%s\nbefore it\n%s", got, before)
	}

	out, err = applyOut(t, endpoint, file, "--prune")
	want = "unchanged keep\nset new\nset retune\ndeleted old/a\ndeleted old/b\ndeleted old/c\n2 set, 1 unchanged, 3 deleted\n"
	if err != nil || out != want {
		t.Errorf("limits apply --prune = %v, printed\n%s\nwant\n%s", err, out, want)
	}
	if got, want := keysListed(t, limitsOut(t, endpoint, "list", "--pinned")), []string{"keep", "new", "retune"}; !slices.Equal(got, want) {
		t.Errorf("after --prune the pinned keys are %q; want the file's, %q", got, want)
	}
	if got, want := keysListed(t, limitsOut(t, endpoint, "list")), []string{"client/x", "keep", "new", "old/by-a-client", "retune"}; !slices.Equal(got, want) {
		t.Errorf("after --prune the keys are %q; want the file's and the clients', %q", got, want)
	}
	if out, err := applyOut(t, endpoint, file, "--prune"); err != nil || out != "unchanged keep\nunchanged new\nunchanged retune\n0 set, 3 unchanged, 0 deleted\n" {
		t.Errorf("limits apply --prune again = %v, printed\n%s\nwant every key unchanged and none deleted", err, out)
	}
	// Without --prune, as before: no list, no deletes, no count of them.
	if out, err := applyOut(t, endpoint, file, "--dry-run"); err != nil || !strings.HasSuffix(out, "\ndry run, nothing changed: 0 to set, 3 unchanged\n") {
		t.Errorf("limits apply --dry-run = %v, printed\n%s", err, out)
	}
}

// A file with no limits (empty, or only comments: a failed export, a
// wrong path) and --prune would delete every pinned limit: refused unless
// --dry-run, which lists them; without --prune it is refused as before.
func TestLimitsApplyPruneOfAFileWithNoLimitsIsRefused(t *testing.T) {
	node, endpoint := clustertest.Start(t)
	limitsOut(t, endpoint, "set", "--limit", "10", "a")
	limitsOut(t, endpoint, "set", "--limit", "10", "b")
	acquireDefines(t, node, "client/x")
	before := limitsOut(t, endpoint, "list")
	for _, text := range []string{"", "# nothing yet\n\n"} {
		if out, err := applyOut(t, endpoint, text, "--prune"); err == nil || !strings.Contains(err.Error(), "--prune would delete every pinned limit; refused") {
			t.Errorf("limits apply --prune of %q = %v, printed %q; want it refused", text, err, out)
		}
		if out, err := applyOut(t, endpoint, text); err == nil || !strings.Contains(err.Error(), "no limits in it") {
			t.Errorf("limits apply of %q = %v, printed %q; want it refused", text, err, out)
		}
		out, err := applyOut(t, endpoint, text, "--dry-run", "--prune")
		if want := "would delete a\nwould delete b\ndry run, nothing changed: 0 to set, 0 unchanged, 2 to delete\n" +
			"without --dry-run this file is refused: no limits in it, and --prune would delete every pinned limit\n"; err != nil || out != want {
			t.Errorf("limits apply --dry-run --prune of %q = %v, printed\n%s\nwant\n%s", text, err, out, want)
		}
	}
	if got := limitsOut(t, endpoint, "list"); got != before {
		t.Errorf("refused and dry runs changed the limits: list printed\n%s\nbefore them\n%s", got, before)
	}
}

// serveAs serves srv's client API on a loopback port until the test ends
// and returns its address.
func serveAs(t *testing.T, srv transport.Service) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	transport.Register(g, srv)
	served := make(chan struct{})
	go func() { _ = g.Serve(lis); close(served) }()
	t.Cleanup(func() { g.Stop(); <-served })
	return lis.Addr().String()
}

// A prune's delete whose answer was lost is retried, and the retry finds
// the key gone (DeleteLimit is not deduplicated): that is the delete done,
// not an error.
func TestLimitsApplyPruneRetriedDeleteIsNoError(t *testing.T) {
	node, endpoint := clustertest.Start(t)
	limitsOut(t, endpoint, "set", "--limit", "10", "keep")
	limitsOut(t, endpoint, "set", "--limit", "10", "extra")
	lossy := serveAs(t, &answerLost{Node: node})
	out, err := applyOut(t, lossy, `{"key":"keep","algorithm":"token-bucket","limit":10,"per":"1s"}`+"\n", "--prune")
	if want := "unchanged keep\ndeleted extra (by an earlier attempt, whose answer was lost)\n0 set, 1 unchanged, 1 deleted\n"; err != nil || out != want {
		t.Errorf("limits apply --prune with a lost answer = %v, printed\n%s\nwant\n%s", err, out, want)
	}
	if got := keysListed(t, limitsOut(t, endpoint, "list")); !slices.Equal(got, []string{"keep"}) {
		t.Errorf("after the prune the cluster holds %q; want only keep", got)
	}
}

// redefinedAfterListing is a node on which, once ListLimits has answered,
// another operator deletes key and a client's acquire defines it again,
// unpinned, before apply's delete of it.
type redefinedAfterListing struct {
	*cluster.Node
	key string
}

func (r redefinedAfterListing) ListLimits(ctx context.Context, req *pb.ListLimitsRequest) (*pb.ListLimitsResponse, error) {
	resp, err := r.Node.ListLimits(ctx, req)
	if err == nil {
		if _, err := r.Node.DeleteLimit(ctx, &pb.DeleteLimitRequest{Key: r.key}); err != nil {
			return nil, err
		}
		if _, err := r.Node.Acquire(ctx, definingAcquire(r.key)); err != nil {
			return nil, err
		}
	}
	return resp, err
}

// A key listed pinned that a client's acquire has defined again by the
// time of its delete is a client's limit: prune leaves it.
func TestLimitsApplyPruneLeavesAKeyAClientRedefined(t *testing.T) {
	node, endpoint := clustertest.Start(t)
	limitsOut(t, endpoint, "set", "--limit", "10", "keep")
	limitsOut(t, endpoint, "set", "--limit", "10", "shared")
	racy := serveAs(t, redefinedAfterListing{Node: node, key: "shared"})
	out, err := applyOut(t, racy, `{"key":"keep","algorithm":"token-bucket","limit":10,"per":"1s"}`+"\n", "--prune")
	if err != nil || !strings.Contains(out, "left shared (no longer pinned") || !strings.HasSuffix(out, "0 set, 1 unchanged, 0 deleted\n") {
		t.Errorf("limits apply --prune = %v, printed\n%s\nwant shared left alone", err, out)
	}
	got, err := node.GetLimit(t.Context(), &pb.GetLimitRequest{Key: "shared"})
	if err != nil || !got.GetFound() || got.GetPinned() {
		t.Errorf("the client's limit of shared after the prune: %v, %v; want it kept, unpinned", got, err)
	}
}

// failingDelete is a node whose DeleteLimit of key fails for good.
type failingDelete struct {
	*cluster.Node
	key string
}

func (f failingDelete) DeleteLimit(ctx context.Context, req *pb.DeleteLimitRequest) (*pb.DeleteLimitResponse, error) {
	if req.GetKey() == f.key {
		return nil, status.Error(codes.Internal, "the disk is full")
	}
	return f.Node.DeleteLimit(ctx, req)
}

// A prune that fails midway says how far it got: every line applied, which
// keys were deleted, how many were not.
func TestLimitsApplyPruneFailingMidwaySaysHowFarItGot(t *testing.T) {
	node, endpoint := clustertest.Start(t)
	for _, k := range []string{"a", "b", "c", "d"} {
		limitsOut(t, endpoint, "set", "--limit", "10", k)
	}
	failing := serveAs(t, failingDelete{Node: node, key: "c"})
	out, err := applyOut(t, failing, `{"key":"a","algorithm":"token-bucket","limit":10,"per":"1s"}`+"\n", "--prune")
	if err == nil || !strings.Contains(err.Error(), "deleting c: ") || !strings.Contains(err.Error(), "the disk is full") ||
		!strings.Contains(err.Error(), "(0 set, 1 unchanged, 1 deleted before it: every line was applied; not deleted: 1 more key to prune)") {
		t.Errorf("limits apply --prune failing at c = %v", err)
	}
	if out != "unchanged a\ndeleted b\n" {
		t.Errorf("limits apply --prune failing at c printed\n%s\nwant a unchanged and b deleted", out)
	}
}
