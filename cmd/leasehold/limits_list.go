package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"reflect"
	"strings"
	"sync/atomic"
	"time"

	"github.com/leasehold/leasehold/cluster"
	"github.com/leasehold/leasehold/internal/proc"
	"github.com/leasehold/leasehold/transport"
	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

// limitsDial holds the flags every limits verb takes to reach the cluster.
type limitsDial struct {
	endpoints *string
	timeout   *time.Duration
	sec       *clientSecurity
}

func addLimitsDialFlags(fs *flag.FlagSet, timeoutUsage string) limitsDial {
	return limitsDial{
		endpoints: fs.String("endpoints", "127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103", "client API addresses"),
		timeout:   fs.Duration("timeout", 5*time.Second, timeoutUsage),
		sec:       addClientSecurityFlags(fs),
	}
}

// runLimitsList prints every key's limit (or those under --prefix, or the
// pinned ones), one JSON object per line as `limits get` prints one, in
// byte order, a page per request.
func runLimitsList(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("limits list", flag.ContinueOnError)
	d := addLimitsDialFlags(fs, "how long each page's request may take")
	prefix := fs.String("prefix", "", "only keys that begin with it")
	pinned := fs.Bool("pinned", false, "only limits set by limits set or apply, not by a client's acquire: what limits apply restores")
	page := fs.Int("page-size", transport.MaxListPage, fmt.Sprintf("keys per request, 1 to %d", transport.MaxListPage))
	if err := parseFlags(fs, args, stdout); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return &usageError{fmt.Errorf("limits list: unexpected arguments %q (a key prefix goes in --prefix)", fs.Args())}
	}
	if *page < 1 || *page > transport.MaxListPage {
		return fmt.Errorf("limits list: --page-size %d: want 1 to %d", *page, transport.MaxListPage)
	}
	if *d.timeout <= 0 {
		return fmt.Errorf("limits list: --timeout %v: must be positive", *d.timeout)
	}
	req := &pb.ListLimitsRequest{Prefix: *prefix, PinnedOnly: *pinned, PageSize: int32(*page)}
	if err := transport.ValidateListLimits(req); err != nil {
		var ie *transport.InvalidError
		if errors.As(err, &ie) && ie.Field == "prefix" {
			return fmt.Errorf("limits list: --prefix: %s", ie.Reason)
		}
		return fmt.Errorf("limits list: %w", err)
	}
	e, err := dialSecure(*d.endpoints, d.sec)
	if err != nil {
		return err
	}
	defer e.Close()
	w := bufio.NewWriter(stdout)
	printed := 0
	for {
		start := time.Now()
		pctx, cancel := context.WithTimeout(ctx, *d.timeout)
		resp, err := onLeader(pctx, e, func(ctx context.Context, c pb.LeaseholdClient) (*pb.ListLimitsResponse, error) {
			return c.ListLimits(ctx, req)
		})
		cancel()
		if err != nil {
			w.Flush() // what was listed, for the error to say how far it got
			if printed == 0 {
				return err
			}
			return fmt.Errorf("limits list: the output is incomplete (%d keys printed, up to %q): %w", printed, req.GetStartAfter(), err)
		}
		for _, l := range resp.GetLimits() {
			if err := printLimit(w, l.GetKey(), l.GetLimit(), l.GetPinned()); err != nil {
				return err
			}
		}
		printed += len(resp.GetLimits())
		if !resp.GetMore() || len(resp.GetLimits()) == 0 {
			// An export to a full disk must not end short and exit 0.
			return w.Flush()
		}
		req.StartAfter = resp.GetLimits()[len(resp.GetLimits())-1].GetKey()
		// A page holds the leader's state machine for a pass over every
		// key; printed lines are flushed first, so a reader does not wait
		// for the pause.
		if err := w.Flush(); err != nil {
			return err
		}
		if err := paceAfter(ctx, start); err != nil {
			return fmt.Errorf("limits list: the output is incomplete (%d keys printed, up to %q): %w", printed, req.GetStartAfter(), err)
		}
	}
}

// printLimit writes one key's limit as a line of JSON: what `limits get`
// and `limits list` print, and `limits apply` reads. It writes a
// limitLine, so that what list exports apply reads back: apply refuses a
// field it does not know.
func printLimit(w io.Writer, key string, l *pb.Limit, pinned bool) error {
	out, err := json.Marshal(limitLine{Key: key, Algorithm: l.GetAlgorithm().String(), Limit: l.GetLimit(),
		Per: time.Duration(l.GetPeriodNs()).String(), Burst: l.GetBurst(), Slots: int(l.GetSlots()), Strict: l.GetStrict(),
		MaxLease: time.Duration(l.GetMaxLeaseNs()).String(), MaxDebt: l.GetMaxDebt(), Pinned: &pinned})
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(w, string(out))
	return err
}

// limitLine is one line of `limits list`, and of a `limits apply` file.
type limitLine struct {
	Key       string `json:"key"`
	Algorithm string `json:"algorithm"`
	Limit     int64  `json:"limit"`
	Per       string `json:"per"`
	Burst     int64  `json:"burst"`
	Slots     int    `json:"slots"`
	Strict    bool   `json:"strict"`
	MaxLease  string `json:"max_lease"`
	MaxDebt   int64  `json:"max_debt"`
	// Pinned is what list printed: false for a limit a client's acquire
	// set, which apply refuses rather than pin (it would keep a key the
	// cluster forgets once idle, for good).
	Pinned *bool `json:"pinned"`
}

// lineField is the field of a limitLine that flag of `limits set` sets.
func lineField(flag string) string { return strings.ReplaceAll(flag, "-", "_") }

// request returns the SetLimit the line asks for, checked as `limits set`
// checks its flags, each error naming the field as the file spells it.
func (ll limitLine) request() (*pb.SetLimitRequest, error) {
	if ll.Pinned != nil && !*ll.Pinned {
		return nil, errors.New(`pinned false: a client's acquire set this limit, and apply would pin it for good; ` +
			`export with limits list --pinned, or write "pinned": true to pin it`)
	}
	name := strings.ReplaceAll(strings.ToLower(ll.Algorithm), "_", "-")
	alg, ok := algorithms[name]
	if !ok {
		return nil, fmt.Errorf("algorithm %q: want token-bucket, sliding-window or concurrency", ll.Algorithm)
	}
	var per, maxLease time.Duration
	for _, f := range []struct {
		name, v string
		d       *time.Duration
	}{{"per", ll.Per, &per}, {"max_lease", ll.MaxLease, &maxLease}} {
		if f.v == "" {
			continue
		}
		d, err := time.ParseDuration(f.v)
		if err != nil {
			return nil, fmt.Errorf("%s %q: want a duration such as 1m or 500ms", f.name, f.v)
		}
		*f.d = d
	}
	given := map[string]bool{"slots": ll.Slots != 0, "burst": ll.Burst != 0, "strict": ll.Strict,
		"max-debt": ll.MaxDebt != 0, "per": per != 0}
	for _, flag := range unusedFlags[name] {
		if given[flag] {
			return nil, fmt.Errorf("%s: a %s limit does not use it (it would be dropped); leave it out",
				lineField(flag), name)
		}
	}
	if ll.Slots < 0 || ll.Slots > transport.MaxSlots {
		return nil, fmt.Errorf("slots %d: must be in [0, %d] (0 means 10)", ll.Slots, transport.MaxSlots)
	}
	req := &pb.SetLimitRequest{Key: ll.Key, Limit: &pb.Limit{Algorithm: alg, Limit: ll.Limit, PeriodNs: int64(per),
		Burst: ll.Burst, Slots: int32(ll.Slots), Strict: ll.Strict, MaxLeaseNs: int64(maxLease), MaxDebt: ll.MaxDebt}}
	if err := transport.ValidateSetLimit(req); err != nil {
		var ie *transport.InvalidError
		if errors.As(err, &ie) && limitFlagNames[ie.Field] != "" {
			return nil, fmt.Errorf("%s: %s", lineField(limitFlagNames[ie.Field]), ie.Reason)
		}
		return nil, err
	}
	return req, nil
}

// runLimitsApply sets the limits a file lists, one JSON object per line as
// `limits list` prints them (FILE, or - for stdin), and with --prune deletes
// the pinned limits it does not name. Every line is checked, and with
// --prune the cluster's pinned keys listed, before anything is changed; a
// limit the cluster already holds as the line says, pinned, is left alone.
func runLimitsApply(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("limits apply", flag.ContinueOnError)
	d := addLimitsDialFlags(fs, "how long each key's requests (and each page of --prune's list) may take")
	prune := fs.Bool("prune", false, "also delete every pinned limit the cluster holds that FILE does not name (never a client's); "+
		"refused for a FILE with no limits unless --dry-run")
	dryRun := fs.Bool("dry-run", false, "print what would be set and deleted, and change nothing")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), limitsApplyUsage+"\n\n"+limitsApplyHelp+"\n\n")
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args, stdout); err != nil {
		return err
	}
	usage := &usageError{errors.New(limitsApplyUsage)}
	if fs.NArg() == 0 {
		return usage
	}
	file := fs.Arg(0)
	// Accept flags after FILE too, as the other verbs do after KEY.
	if err := parseFlags(fs, fs.Args()[1:], stdout); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usage
	}
	if *d.timeout <= 0 {
		return fmt.Errorf("limits apply: --timeout %v: must be positive", *d.timeout)
	}
	reqs, err := readLimitLines(file)
	if err != nil {
		return fmt.Errorf("limits apply: %w", err)
	}
	if len(reqs) == 0 {
		switch {
		case !*prune:
			return fmt.Errorf("limits apply: %s: no limits in it", file)
		case !*dryRun:
			// An empty file (a failed export, an unset variable in a
			// pipeline) would delete every limit set: the mistake prune
			// refuses outright, where --dry-run only shows it.
			return fmt.Errorf("limits apply: %s: no limits in it, and --prune would delete every pinned limit; refused "+
				"(--dry-run lists them; limits delete removes a key)", file)
		}
	}
	e, err := dialSecure(*d.endpoints, d.sec)
	if err != nil {
		return err
	}
	defer e.Close()
	a := applier{e: e, timeout: *d.timeout, prune: *prune, dryRun: *dryRun, out: stdout}
	var extra []string
	if *prune {
		if extra, err = a.pinnedNotIn(ctx, reqs); err != nil {
			return fmt.Errorf("limits apply: listing the pinned limits to prune, before any change: %w", err)
		}
	}
	for _, req := range reqs {
		if err := a.set(ctx, req); err != nil {
			notDone := "the lines after it were not applied"
			if len(extra) > 0 {
				notDone += fmt.Sprintf(", and none of the %s to prune was deleted", plural(len(extra), "key"))
			}
			return fmt.Errorf("limits apply: %s: %w (%s before it; %s)", req.GetKey(), err, a.counts(), notDone)
		}
	}
	for i, key := range extra {
		if err := a.delete(ctx, key); err != nil {
			return fmt.Errorf("limits apply: deleting %s: %w (%s before it: every line was applied; not deleted: %s to prune)",
				key, err, a.counts(), plural(len(extra)-i-1, "more key"))
		}
	}
	if *dryRun {
		fmt.Fprintf(stdout, "dry run, nothing changed: %s\n", a.counts())
		if len(reqs) == 0 {
			// What the run would do, said as the run says it.
			fmt.Fprintf(stdout, "without --dry-run this file is refused: no limits in it, and --prune would delete every pinned limit\n")
		}
		return nil
	}
	fmt.Fprintln(stdout, a.counts())
	return nil
}

const limitsApplyUsage = "usage: leasehold limits apply [--prune] [--dry-run] [flags] FILE (one limit per line, as limits list prints them; - for stdin)"

const limitsApplyHelp = "Sets each limit FILE holds that the cluster does not, pinned, and prints \"N set, M unchanged\".\n" +
	"With --prune it also deletes every pinned limit the cluster holds that FILE does not name, so that\n" +
	"the cluster ends up holding exactly FILE's limits, and prints \"N set, M unchanged, K deleted\"; a limit\n" +
	"a client's acquire set is never deleted. --dry-run prints what would be set and deleted, and changes\n" +
	"nothing. Every line is checked, and the pinned keys listed, before anything changes."

// applier makes the changes of one `limits apply`, each key's requests
// bounded by timeout, and counts them.
type applier struct {
	e       *proc.Admin
	timeout time.Duration
	prune   bool
	dryRun  bool
	out     io.Writer

	nSet, nSame, nDeleted int
}

// counts says what was done so far, as the run's last line says it.
func (a *applier) counts() string {
	verb := [2]string{"set", "deleted"}
	if a.dryRun {
		verb = [2]string{"to set", "to delete"}
	}
	s := fmt.Sprintf("%d %s, %d unchanged", a.nSet, verb[0], a.nSame)
	if a.prune {
		s += fmt.Sprintf(", %d %s", a.nDeleted, verb[1])
	}
	return s
}

// readLimitLines reads and checks every line of name (- for stdin): a
// line that does not parse or would be refused, or a key given twice, is
// an error naming its line. A file with no limit lines is no error here:
// the caller decides what applying it means.
func readLimitLines(name string) ([]*pb.SetLimitRequest, error) {
	var b []byte
	var err error
	if name == "-" {
		b, err = io.ReadAll(os.Stdin)
	} else {
		b, err = os.ReadFile(name)
	}
	if err != nil {
		return nil, err
	}
	b = bytes.TrimPrefix(b, []byte("\ufeff")) // a byte-order mark some editors write
	var reqs []*pb.SetLimitRequest
	seen := map[string]int{}
	for i, line := range bytes.Split(b, []byte("\n")) {
		n := i + 1
		line = bytes.TrimSpace(line)
		if len(line) == 0 || line[0] == '#' {
			continue
		}
		dec := json.NewDecoder(bytes.NewReader(line))
		dec.DisallowUnknownFields()
		var ll limitLine
		err := dec.Decode(&ll)
		if err == nil {
			if _, end := dec.Token(); end != io.EOF {
				err = errors.New("more after the object")
			}
		}
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %s (one JSON object per line, as limits list prints them; # starts a comment line)",
				name, n, jsonProblem(err))
		}
		req, err := ll.request()
		if err != nil {
			return nil, fmt.Errorf("%s:%d (key %q): %w", name, n, ll.Key, err)
		}
		if first, ok := seen[ll.Key]; ok {
			return nil, fmt.Errorf("%s:%d: key %q again (first on line %d)", name, n, ll.Key, first)
		}
		seen[ll.Key] = n
		reqs = append(reqs, req)
	}
	return reqs, nil
}

// jsonProblem says what is wrong with a line's JSON in the file's terms:
// a field of the wrong type by its name, not the Go struct's.
func jsonProblem(err error) string {
	var te *json.UnmarshalTypeError
	if !errors.As(err, &te) {
		return err.Error()
	}
	want := "a string"
	switch te.Type.Kind() {
	case reflect.Int, reflect.Int64:
		want = "a whole number"
	case reflect.Bool:
		want = "true or false"
	}
	return fmt.Sprintf("%s: want %s, not a JSON %s", te.Field, want, te.Value)
}

// plural says n nouns.
func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

// pruneListPage is the page size of --prune's list; tests make it small
// to page without a thousand keys.
var pruneListPage int32 = transport.MaxListPage

// pinnedNotIn lists, a page per request, every key the cluster holds a
// pinned limit for that reqs do not name: what --prune deletes.
func (a *applier) pinnedNotIn(ctx context.Context, reqs []*pb.SetLimitRequest) ([]string, error) {
	named := make(map[string]bool, len(reqs))
	for _, r := range reqs {
		named[r.GetKey()] = true
	}
	var extra []string
	req := &pb.ListLimitsRequest{PinnedOnly: true, PageSize: pruneListPage}
	for {
		start := time.Now()
		pctx, cancel := context.WithTimeout(ctx, a.timeout)
		resp, err := onLeader(pctx, a.e, func(ctx context.Context, c pb.LeaseholdClient) (*pb.ListLimitsResponse, error) {
			return c.ListLimits(ctx, req)
		})
		cancel()
		if err != nil {
			return nil, err
		}
		for _, l := range resp.GetLimits() {
			// Checked, not trusted to pinned_only: a leader of a release
			// that lists without it would list the clients' limits too.
			if l.GetPinned() && !named[l.GetKey()] {
				extra = append(extra, l.GetKey())
			}
		}
		if !resp.GetMore() || len(resp.GetLimits()) == 0 {
			return extra, nil
		}
		req.StartAfter = resp.GetLimits()[len(resp.GetLimits())-1].GetKey()
		if err := paceAfter(ctx, start); err != nil {
			return nil, err
		}
	}
}

// set sets req's limit unless the cluster holds it already, pinned,
// exactly as req says, and prints which it was.
func (a *applier) set(ctx context.Context, req *pb.SetLimitRequest) error {
	ctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	cur, err := onLeader(ctx, a.e, func(ctx context.Context, c pb.LeaseholdClient) (*pb.GetLimitResponse, error) {
		return c.GetLimit(ctx, &pb.GetLimitRequest{Key: req.GetKey()})
	})
	if err != nil {
		return err
	}
	// As the cluster compares definitions: defaults filled in.
	if cur.GetFound() && cur.GetPinned() &&
		cluster.LimitFromPB(cur.GetLimit()).Normalize() == cluster.LimitFromPB(req.GetLimit()).Normalize() {
		a.nSame++
		fmt.Fprintf(a.out, "unchanged %s\n", req.GetKey())
		return nil
	}
	if a.dryRun {
		a.nSet++
		fmt.Fprintf(a.out, "would set %s\n", req.GetKey())
		return nil
	}
	if _, err := onLeader(ctx, a.e, func(ctx context.Context, c pb.LeaseholdClient) (*pb.SetLimitResponse, error) {
		return c.SetLimit(ctx, req)
	}); err != nil {
		return err
	}
	a.nSet++
	fmt.Fprintf(a.out, "set %s\n", req.GetKey())
	return nil
}

// delete deletes key's limit if it is still pinned, and prints what it
// did. The check narrows, to one round trip, the window in which a limit
// listed pinned may have been deleted by someone else and defined again by
// a client's acquire: DeleteLimit has no condition to close it.
func (a *applier) delete(ctx context.Context, key string) error {
	if a.dryRun {
		a.nDeleted++
		fmt.Fprintf(a.out, "would delete %s\n", key)
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	cur, err := onLeader(ctx, a.e, func(ctx context.Context, c pb.LeaseholdClient) (*pb.GetLimitResponse, error) {
		return c.GetLimit(ctx, &pb.GetLimitRequest{Key: key})
	})
	if err != nil {
		return err
	}
	if !cur.GetFound() || !cur.GetPinned() {
		fmt.Fprintf(a.out, "left %s (no longer pinned: deleted, or set by a client's acquire, since it was listed)\n", key)
		return nil
	}
	found, retried, err := deleteLimit(ctx, a.e, key)
	if err != nil {
		return err
	}
	a.nDeleted++
	if found != nil && !*found {
		// Gone before this delete applied: not an error, the cluster no
		// longer holds it, which is what prune asked for.
		if retried {
			fmt.Fprintf(a.out, "deleted %s (by an earlier attempt, whose answer was lost)\n", key)
		} else {
			fmt.Fprintf(a.out, "deleted %s (by someone else, since it was checked)\n", key)
		}
		return nil
	}
	fmt.Fprintf(a.out, "deleted %s\n", key)
	return nil
}

// deleteLimit deletes key's limit on the leader. found is whether the key
// had one, nil when the leader cannot say (a release before found was
// added); retried says another attempt may have applied, when a found
// false may be its doing: a DeleteLimit is not deduplicated. An attempt a
// follower refused (NotLeader) applied nothing and does not count.
func deleteLimit(ctx context.Context, e *proc.Admin, key string) (found *bool, retried bool, err error) {
	var attempts atomic.Int32 // that may have applied; the calls may overlap
	resp, err := onLeader(ctx, e, func(ctx context.Context, c pb.LeaseholdClient) (*pb.DeleteLimitResponse, error) {
		resp, err := c.DeleteLimit(ctx, &pb.DeleteLimitRequest{Key: key})
		if !errors.Is(transport.FromStatus(err), transport.ErrNotLeader) {
			attempts.Add(1)
		}
		return resp, err
	})
	if err != nil {
		return nil, false, err
	}
	return resp.Found, attempts.Load() > 1, nil
}
