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
	"strings"
	"time"

	"google.golang.org/protobuf/proto"

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
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("limits list: unexpected arguments %q (a key prefix goes in --prefix)", fs.Args())
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
	defer w.Flush()
	for {
		pctx, cancel := context.WithTimeout(ctx, *d.timeout)
		resp, err := onLeader(pctx, e, func(ctx context.Context, c pb.LeaseholdClient) (*pb.ListLimitsResponse, error) {
			return c.ListLimits(ctx, req)
		})
		cancel()
		if err != nil {
			return err
		}
		for _, l := range resp.GetLimits() {
			if err := printLimit(w, l.GetKey(), l.GetLimit(), l.GetPinned()); err != nil {
				return err
			}
		}
		if !resp.GetMore() || len(resp.GetLimits()) == 0 {
			return nil
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
	Pinned    *bool  `json:"pinned"` // what list printed; apply pins every limit
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
// checks its flags.
func (ll limitLine) request() (*pb.SetLimitRequest, error) {
	alg := strings.ReplaceAll(strings.ToLower(ll.Algorithm), "_", "-")
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
			return nil, fmt.Errorf("%s %q: a duration such as 1m or 500ms", f.name, f.v)
		}
		*f.d = d
	}
	set := map[string]bool{"slots": ll.Slots != 0, "burst": ll.Burst != 0, "strict": ll.Strict,
		"max-debt": ll.MaxDebt != 0, "per": per != 0}
	if err := unusedLimitFlag(alg, set); err != nil {
		return nil, errors.New(strings.Replace(strings.TrimPrefix(err.Error(), "--"), "max-debt", "max_debt", 1))
	}
	l, err := limitFromFlags(alg, ll.Limit, per, ll.Burst, ll.Slots, ll.Strict, maxLease, ll.MaxDebt)
	if err != nil {
		return nil, err
	}
	req := &pb.SetLimitRequest{Key: ll.Key, Limit: l}
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
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return errors.New("usage: leasehold limits apply [flags] FILE (one limit per line, as `limits list` prints them; - for stdin)")
	}
	if *d.timeout <= 0 {
		return fmt.Errorf("limits apply: --timeout %v: must be positive", *d.timeout)
	}
	reqs, err := readLimitLines(fs.Arg(0))
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
	var reqs []*pb.SetLimitRequest
	seen := map[string]int{}
	for i, line := range bytes.Split(b, []byte("\n")) {
		n := i + 1
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		dec := json.NewDecoder(bytes.NewReader(line))
		dec.DisallowUnknownFields()
		var ll limitLine
		if err := dec.Decode(&ll); err != nil {
			return nil, fmt.Errorf("%s:%d: %v", name, n, err)
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

// applyLimit sets req's limit unless the cluster holds it already, pinned,
// exactly as req says; it reports whether it set it.
func applyLimit(ctx context.Context, e *proc.Admin, req *pb.SetLimitRequest) (bool, error) {
	cur, err := onLeader(ctx, e, func(ctx context.Context, c pb.LeaseholdClient) (*pb.GetLimitResponse, error) {
		return c.GetLimit(ctx, &pb.GetLimitRequest{Key: req.GetKey()})
	})
	if err != nil {
		return false, err
	}
	if cur.GetFound() && cur.GetPinned() && proto.Equal(cur.GetLimit(), req.GetLimit()) {
		return false, nil
	}
	_, err = onLeader(ctx, e, func(ctx context.Context, c pb.LeaseholdClient) (*pb.SetLimitResponse, error) {
		return c.SetLimit(ctx, req)
	})
	return err == nil, err
}
