package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/leasehold/leasehold/transport"
	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

var algorithms = map[string]pb.Algorithm{
	"token-bucket":   pb.Algorithm_TOKEN_BUCKET,
	"sliding-window": pb.Algorithm_SLIDING_WINDOW,
	"concurrency":    pb.Algorithm_CONCURRENCY,
}

// limitsUsage names the verbs; each verb's -h lists its flags.
const limitsUsage = "usage: leasehold limits set|get|delete [flags] KEY, limits delete --prefix P [--unpinned] [--dry-run] [flags], limits list [flags], limits apply [--prune] [--dry-run] [flags] FILE (leasehold limits set -h lists a verb's flags)"

func runLimits(ctx context.Context, args []string, stdout io.Writer) error {
	if len(args) == 0 {
		return &usageError{errors.New(limitsUsage)}
	}
	verb := args[0]
	switch verb {
	case "set", "get", "delete":
	case "list":
		return runLimitsList(ctx, args[1:], stdout)
	case "apply":
		return runLimitsApply(ctx, args[1:], stdout)
	case "-h", "-help", "--help", "help":
		fmt.Fprintln(stdout, limitsUsage)
		return flag.ErrHelp
	default:
		return &usageError{fmt.Errorf("unknown verb %q; want set, get, delete, list or apply", verb)}
	}
	fs := flag.NewFlagSet("limits "+verb, flag.ContinueOnError)
	timeoutUsage := "how long the command may take"
	if verb == "delete" {
		timeoutUsage += " (with --prefix, each request of up to 1000 keys)"
	}
	d := addLimitsDialFlags(fs, timeoutUsage)
	list, timeout, sec := d.endpoints, d.timeout, d.sec
	var (
		algorithm *string
		limit     *int64
		per       *time.Duration
		burst     *int64
		slots     *int
		strict    *bool
		maxLease  *time.Duration
		maxDebt   *int64
	)
	if verb == "set" {
		algorithm = fs.String("algorithm", "token-bucket", "token-bucket, sliding-window or concurrency")
		limit = fs.Int64("limit", 0, "tokens per --per (bucket), per window (sliding window) or units held (concurrency)")
		per = fs.Duration("per", time.Second, "refill period or window length")
		burst = fs.Int64("burst", 0, "bucket capacity (default --limit)")
		slots = fs.Int("slots", 0, "sliding-window sub-windows (default 10)")
		strict = fs.Bool("strict", false, "admit at most burst + rate x interval, by holding back rate x max-lease")
		maxLease = fs.Duration("max-lease", 0, "longest lease on this key (default 2s, at most 1m)")
		maxDebt = fs.Int64("max-debt", 0, "tokens a token bucket may owe when usage is charged beyond what was reserved (default 0: no debt)")
	}
	var bulk *bulkDelete
	if verb == "delete" {
		bulk = addBulkDeleteFlags(fs)
	}
	// Accept flags before and after the key.
	if err := parseFlags(fs, args[1:], stdout); err != nil {
		return err
	}
	rest := fs.Args()
	var key string
	if len(rest) > 0 {
		key = rest[0]
		if err := parseFlags(fs, rest[1:], stdout); err != nil {
			return err
		}
	}
	if bulk != nil && bulk.given(fs) {
		return bulk.run(ctx, fs, d, rest, stdout)
	}
	if len(rest) == 0 {
		return &usageError{fmt.Errorf("limits %s: missing KEY", verb)}
	}
	if fs.NArg() > 0 {
		return &usageError{fmt.Errorf("limits %s: unexpected arguments %q", verb, fs.Args())}
	}

	// Check every request locally, before dialing: a number out of range
	// is refused here, naming its flag, never converted and sent.
	if *timeout <= 0 {
		return fmt.Errorf("limits %s: --timeout %v: must be positive", verb, *timeout)
	}
	var setReq *pb.SetLimitRequest
	switch verb {
	case "set":
		if err := unusedLimitFlag(fs, *algorithm); err != nil {
			return fmt.Errorf("limits set: %w", err)
		}
		l, err := limitFromFlags(*algorithm, *limit, *per, *burst, *slots, *strict, *maxLease, *maxDebt)
		if err != nil {
			return fmt.Errorf("limits set: %w", err)
		}
		setReq = &pb.SetLimitRequest{Key: key, Limit: l}
		if err := transport.ValidateSetLimit(setReq); err != nil {
			return fmt.Errorf("limits set: %w", err)
		}
	case "get":
		if err := transport.ValidateGetLimit(&pb.GetLimitRequest{Key: key}); err != nil {
			return fmt.Errorf("limits get: %w", err)
		}
	case "delete":
		if err := transport.ValidateDeleteLimit(&pb.DeleteLimitRequest{Key: key}); err != nil {
			return fmt.Errorf("limits delete: %w", err)
		}
	}

	e, err := dialSecure(*list, sec)
	if err != nil {
		return err
	}
	defer e.Close()
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()

	switch verb {
	case "set":
		_, err := onLeader(ctx, e, func(ctx context.Context, c pb.LeaseholdClient) (*pb.SetLimitResponse, error) {
			return c.SetLimit(ctx, setReq)
		})
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "set %s\n", key)
	case "get":
		resp, err := onLeader(ctx, e, func(ctx context.Context, c pb.LeaseholdClient) (*pb.GetLimitResponse, error) {
			return c.GetLimit(ctx, &pb.GetLimitRequest{Key: key})
		})
		if err != nil {
			return err
		}
		if !resp.Found {
			return fmt.Errorf("key %q has no limit", key)
		}
		return printLimit(stdout, key, resp.GetLimit(), resp.GetPinned())
	case "delete":
		found, retried, err := deleteLimit(ctx, e, key)
		if err != nil {
			return err
		}
		// No found at all is a leader of an earlier release (a rolling
		// upgrade): the delete applied, whether there was a limit is unknown.
		switch {
		case found == nil || *found:
			fmt.Fprintf(stdout, "deleted %s\n", key)
		case retried:
			// An earlier attempt whose answer was lost may have deleted it
			// (a review found this reported as "no limit", exit 1).
			fmt.Fprintf(stdout, "%s has no limit now (an earlier attempt, whose answer was lost, may have deleted it)\n", key)
		default:
			return fmt.Errorf("key %q has no limit", key)
		}
	}
	return nil
}

// limitFlagNames names the flag of `limits set` that sets each field of the
// limit, as transport's Validate functions name the fields; a line of
// `limits apply` names it as lineField does.
var limitFlagNames = map[string]string{
	"limit.algorithm":    "algorithm",
	"limit.limit":        "limit",
	"limit.period_ns":    "per",
	"limit.burst":        "burst",
	"limit.slots":        "slots",
	"limit.max_lease_ns": "max-lease",
	"limit.max_debt":     "max-debt",
}

// unusedFlags lists, per algorithm, the flags of `limits set` whose field
// the state machine drops for that algorithm (fsm.Limit.Normalize): given,
// they would be accepted and silently lost.
var unusedFlags = map[string][]string{
	"token-bucket":   {"slots"},
	"sliding-window": {"burst", "strict", "max-debt"},
	"concurrency":    {"per", "burst", "slots", "strict", "max-debt"},
}

// unusedLimitFlag refuses a flag given in fs that the algorithm does not
// use, rather than send a limit without it. An unknown algorithm is left
// to limitFromFlags.
func unusedLimitFlag(fs *flag.FlagSet, algorithm string) error {
	for _, name := range unusedFlags[algorithm] {
		if isSet(fs, name) {
			return fmt.Errorf("--%s: a %s limit does not use it (it would be dropped); leave it out, or pick the --algorithm that does", name, algorithm)
		}
	}
	return nil
}

// limitFromFlags builds the limit `limits set` sends, checking every number
// against the server's rules (transport.ValidateLimit) before it is
// converted or sent. An error names the flag at fault and what it allows.
func limitFromFlags(algorithm string, limit int64, per time.Duration, burst int64, slots int, strict bool,
	maxLease time.Duration, maxDebt int64) (*pb.Limit, error) {
	alg, ok := algorithms[algorithm]
	if !ok {
		return nil, fmt.Errorf("--algorithm %q: want token-bucket, sliding-window or concurrency", algorithm)
	}
	// slots is the one number that narrows (int to int32): range-check it
	// first, or 4294967297 would be sent as 1.
	if slots < 0 || slots > transport.MaxSlots {
		return nil, fmt.Errorf("--slots %d: must be in [0, %d] (0 means 10)", slots, transport.MaxSlots)
	}
	l := &pb.Limit{Algorithm: alg, Limit: limit, PeriodNs: int64(per), Burst: burst, Slots: int32(slots),
		Strict: strict, MaxLeaseNs: int64(maxLease), MaxDebt: maxDebt}
	if err := transport.ValidateLimit("limit", l); err != nil {
		var ie *transport.InvalidError
		if errors.As(err, &ie) {
			if name, ok := limitFlagNames[ie.Field]; ok {
				return nil, fmt.Errorf("--%s: %s", name, ie.Reason)
			}
		}
		return nil, err
	}
	return l, nil
}
