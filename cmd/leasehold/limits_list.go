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
	}
}

// printLimit writes one key's limit as a line of JSON: what `limits get`
// and `limits list` print, and `limits apply` reads.
func printLimit(w io.Writer, key string, l *pb.Limit, pinned bool) error {
	out, err := json.Marshal(map[string]any{
		"key": key, "algorithm": l.GetAlgorithm().String(), "limit": l.GetLimit(), "per": time.Duration(l.GetPeriodNs()).String(),
		"burst": l.GetBurst(), "slots": l.GetSlots(), "strict": l.GetStrict(), "max_lease": time.Duration(l.GetMaxLeaseNs()).String(),
		"max_debt": l.GetMaxDebt(), "pinned": pinned,
	})
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(w, string(out))
	return err
}

// limitLine is one line of a `limits apply` file, as printLimit writes it.
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

// limitLineFields names, for each field of a limit as transport's
// Validate functions name it, the field of a limitLine.
var limitLineFields = map[string]string{
	"limit.algorithm":    "algorithm",
	"limit.limit":        "limit",
	"limit.period_ns":    "per",
	"limit.burst":        "burst",
	"limit.slots":        "slots",
	"limit.max_lease_ns": "max_lease",
	"limit.max_debt":     "max_debt",
}

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
				strings.ReplaceAll(flag, "-", "_"), name)
		}
	}
	if ll.Slots < 0 || ll.Slots > transport.MaxSlots {
		return nil, fmt.Errorf("slots %d: must be in [0, %d] (0 means 10)", ll.Slots, transport.MaxSlots)
	}
	req := &pb.SetLimitRequest{Key: ll.Key, Limit: &pb.Limit{Algorithm: alg, Limit: ll.Limit, PeriodNs: int64(per),
		Burst: ll.Burst, Slots: int32(ll.Slots), Strict: ll.Strict, MaxLeaseNs: int64(maxLease), MaxDebt: ll.MaxDebt}}
	if err := transport.ValidateSetLimit(req); err != nil {
		var ie *transport.InvalidError
		if errors.As(err, &ie) && limitLineFields[ie.Field] != "" {
			return nil, fmt.Errorf("%s: %s", limitLineFields[ie.Field], ie.Reason)
		}
		return nil, err
	}
	return req, nil
}

// runLimitsApply sets the limits a file lists, one JSON object per line as
// `limits list` prints them (FILE, or - for stdin). Every line is checked
// before anything is sent; a limit the cluster already holds as the line
// says, pinned, is left alone.
func runLimitsApply(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("limits apply", flag.ContinueOnError)
	d := addLimitsDialFlags(fs, "how long each key's requests may take")
	if err := parseFlags(fs, args, stdout); err != nil {
		return err
	}
	usage := &usageError{errors.New("usage: leasehold limits apply [flags] FILE (one limit per line, as limits list prints them; - for stdin)")}
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
	e, err := dialSecure(*d.endpoints, d.sec)
	if err != nil {
		return err
	}
	defer e.Close()
	var set, same int
	for _, req := range reqs {
		kctx, cancel := context.WithTimeout(ctx, *d.timeout)
		changed, err := applyLimit(kctx, e, req)
		cancel()
		if err != nil {
			return fmt.Errorf("limits apply: %s: %w (%d set, %d unchanged before it; the lines after it were not applied)", req.GetKey(), err, set, same)
		}
		if changed {
			set++
			fmt.Fprintf(stdout, "set %s\n", req.GetKey())
		} else {
			same++
			fmt.Fprintf(stdout, "unchanged %s\n", req.GetKey())
		}
	}
	fmt.Fprintf(stdout, "%d set, %d unchanged\n", set, same)
	return nil
}

// readLimitLines reads and checks every line of name (- for stdin): a
// line that does not parse or would be refused, or a key given twice, is
// an error naming its line.
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
	if len(reqs) == 0 {
		return nil, fmt.Errorf("%s: no limits in it", name)
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

// applyLimit sets req's limit unless the cluster holds it already, pinned,
// exactly as req says; it reports whether it set it.
func applyLimit(ctx context.Context, e *proc.Admin, req *pb.SetLimitRequest) (bool, error) {
	cur, err := onLeader(ctx, e, func(ctx context.Context, c pb.LeaseholdClient) (*pb.GetLimitResponse, error) {
		return c.GetLimit(ctx, &pb.GetLimitRequest{Key: req.GetKey()})
	})
	if err != nil {
		return false, err
	}
	// As the cluster compares definitions: defaults filled in.
	if cur.GetFound() && cur.GetPinned() &&
		cluster.LimitFromPB(cur.GetLimit()).Normalize() == cluster.LimitFromPB(req.GetLimit()).Normalize() {
		return false, nil
	}
	_, err = onLeader(ctx, e, func(ctx context.Context, c pb.LeaseholdClient) (*pb.SetLimitResponse, error) {
		return c.SetLimit(ctx, req)
	})
	return err == nil, err
}
