package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"sync/atomic"
	"time"

	"github.com/leasehold/leasehold/fsm"
	"github.com/leasehold/leasehold/internal/proc"
	"github.com/leasehold/leasehold/transport"
	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

// bulkDelete is `limits delete --prefix P [--unpinned] [--dry-run]`: every
// key under a prefix, a Raft entry of up to 1000 keys per request.
type bulkDelete struct {
	prefix   *string
	unpinned *bool
	dryRun   *bool
}

func addBulkDeleteFlags(fs *flag.FlagSet) *bulkDelete {
	return &bulkDelete{
		prefix: fs.String("prefix", "", "delete every key that begins with it, rather than one KEY; "+
			"none is not an error (it says no key is under it, and exits 0)"),
		unpinned: fs.Bool("unpinned", false, "with --prefix: only keys a client's acquire created, never a limit "+
			"set by limits set or apply (checked as each delete applies)"),
		dryRun: fs.Bool("dry-run", false, "with --prefix: count and show the keys it would delete, and change nothing"),
	}
}

// bulkProgressEvery is how many requests pass between progress lines: a
// line per 10 000 keys deleted at most. A variable for the tests.
var bulkProgressEvery = 10

// bulkDryRunShown is how many of the keys a dry run would delete it names.
const bulkDryRunShown = 10

// given reports whether the command line asks for a bulk delete: any of
// its flags set.
func (b *bulkDelete) given(fs *flag.FlagSet) bool {
	return isSet(fs, "prefix") || isSet(fs, "unpinned") || isSet(fs, "dry-run")
}

// run checks the command line (args: what is left of it, flags parsed)
// and deletes, or with --dry-run lists, the keys under the prefix.
func (b *bulkDelete) run(ctx context.Context, fs *flag.FlagSet, d limitsDial, args []string, stdout io.Writer) error {
	switch {
	case !isSet(fs, "prefix"):
		return &usageError{errors.New("limits delete: --unpinned and --dry-run go with --prefix P; to delete one key, limits delete KEY")}
	case len(args) > 0:
		return &usageError{fmt.Errorf("limits delete: KEY %q and --prefix together: give one (a key, or the prefix of the keys to delete)", args[0])}
	case *d.timeout <= 0:
		return fmt.Errorf("limits delete: --timeout %v: must be positive", *d.timeout)
	}
	req := &pb.DeleteLimitsRequest{Prefix: *b.prefix, UnpinnedOnly: *b.unpinned}
	if err := transport.ValidateDeleteLimits(req); err != nil {
		var ie *transport.InvalidError
		if errors.As(err, &ie) && ie.Field == "prefix" && req.GetPrefix() == "" {
			return errors.New(`limits delete: --prefix "" deletes every key, the limits you set included: ` +
				"add --unpinned to delete every key clients created, or name a prefix")
		}
		if errors.As(err, &ie) && ie.Field == "prefix" {
			return fmt.Errorf("limits delete: --prefix: %s", ie.Reason)
		}
		return fmt.Errorf("limits delete: %w", err)
	}
	e, err := dialSecure(*d.endpoints, d.sec)
	if err != nil {
		return err
	}
	defer e.Close()
	if *b.dryRun {
		return b.preview(ctx, e, *d.timeout, stdout)
	}
	return b.deleteAll(ctx, e, req, *d.timeout, stdout)
}

// what names the keys a bulk delete takes, for its messages.
func (b *bulkDelete) what() string {
	s := fmt.Sprintf("under %q", *b.prefix)
	if *b.unpinned {
		s += " (unpinned only)"
	}
	return s
}

// bulkPauseFactor is how long the commands that page through every key
// (limits delete --prefix, limits list, apply --prune's list) wait after
// each request, as a multiple of the request's own time. Each
// DeleteLimits entry holds every replica's state machine for a pass over
// every key, and each ListLimits page the leader's (fsm/DESIGN.md,
// "Deleting keys in bulk": 46–59 ms at two million keys), and sent back to
// back they held it nearly all the time: an attacker's pass measured a
// client's central decisions at p50 14 ms and 48–69 a second during a
// 100 000-key delete, against 1.5 ms and 500–640 before. Waiting three
// times as long as a request took leaves the machine to everyone else at
// least three quarters of the time. Room is made from the first entry on,
// so a slower delete does not keep a full cluster full for longer. A
// request that took long for another reason (an election, a stopped
// leader the CLI waited on) says nothing of the next one's cost: the
// pause is at most bulkPauseMax.
const (
	bulkPauseFactor = 3
	bulkPauseMax    = 5 * time.Second
)

// paceAfter waits, before the next page's request, bulkPauseFactor times
// as long as the one begun at start took, at most bulkPauseMax.
func paceAfter(ctx context.Context, start time.Time) error {
	return pause(ctx, min(time.Duration(bulkPauseFactor)*time.Since(start), bulkPauseMax))
}

// deleteAll calls DeleteLimits on the leader from where the last call
// stopped until it says there is no more, printing progress every
// bulkProgressEvery calls and pausing between calls (bulkPauseFactor).
// Each call is one Raft entry, bounded by timeout; a call retried after a
// lost answer starts from the same key, and finds the keys the lost one
// deleted gone, so its count of them is lost too.
func (b *bulkDelete) deleteAll(ctx context.Context, e *proc.Admin, req *pb.DeleteLimitsRequest,
	timeout time.Duration, stdout io.Writer) error {
	var deleted int64
	lost, examined := false, false
	for calls := 1; ; calls++ {
		start := time.Now()
		resp, applied, err := deleteLimits(ctx, e, req, timeout)
		lost = lost || applied > 1
		if err != nil {
			// The failed call may have applied (its answer lost).
			var unknown string
			if applied > 0 {
				// Each attempt starts from the same key, so each
				// one that applied took the next keys.
				unknown = fmt.Sprintf(" (the last request's outcome is unknown: it may have deleted up to %d more)",
					int(applied)*fsm.MaxDeleteExamined)
			}
			if deleted == 0 && calls == 1 {
				return fmt.Errorf("limits delete --prefix: %w%s", err, unknown)
			}
			return fmt.Errorf("limits delete --prefix: deleted %d keys %s up to %q%s, then: %w; run it again to continue",
				deleted, b.what(), req.GetStartAfter(), unknown, err)
		}
		deleted += resp.GetDeleted()
		examined = examined || resp.GetLastKey() != ""
		if !resp.GetMore() {
			break
		}
		if err := paceAfter(ctx, start); err != nil {
			return fmt.Errorf("limits delete --prefix: deleted %d keys %s up to %q, then: %w; run it again to continue",
				deleted, b.what(), resp.GetLastKey(), err)
		}
		req.StartAfter = resp.GetLastKey()
		if calls%bulkProgressEvery == 0 {
			fmt.Fprintf(stdout, "deleted %d keys so far, up to %q\n", deleted, req.GetStartAfter())
		}
	}
	b.summary(stdout, deleted, examined, lost)
	return nil
}

// summary prints a finished bulk delete's outcome: deleted keys were
// deleted, examined says whether any key was under the prefix, lost
// whether a request whose answer was lost may have deleted keys uncounted.
// No key under the prefix is said in words, not as "deleted 0", since it
// is the mark of a misspelt prefix; it is not an error (see the --prefix
// flag).
func (b *bulkDelete) summary(stdout io.Writer, deleted int64, examined, lost bool) {
	switch {
	case !examined && lost:
		fmt.Fprintf(stdout, "no key under %q now (a request whose answer was lost may have deleted them)\n", *b.prefix)
	case !examined:
		fmt.Fprintf(stdout, "no key under %q: nothing deleted\n", *b.prefix)
	case lost:
		fmt.Fprintf(stdout, "deleted %d keys %s\n", deleted, b.what())
		fmt.Fprintln(stdout, "(a request whose answer was lost may have deleted more: they are not counted)")
	case deleted == 0:
		// Only --unpinned keeps a key it examines.
		fmt.Fprintf(stdout, "deleted 0 keys %s: every key under it is pinned, and kept\n", b.what())
	default:
		fmt.Fprintf(stdout, "deleted %d keys %s\n", deleted, b.what())
	}
}

// pause waits d, or until ctx ends.
func pause(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// mayHaveApplied reports whether a DeleteLimits call that returned err
// (raw, as the call returned it) may have deleted keys: all but one not
// served (a follower's NotLeader, UNIMPLEMENTED from a node of an earlier
// release, a request shed) or refused (not allowed, not valid, needing an
// upgrade).
func mayHaveApplied(err error) bool {
	if transport.Unimplemented(err) {
		return false
	}
	err = transport.FromStatus(err)
	for _, notServed := range []error{transport.ErrNotLeader, transport.ErrOverloaded, transport.ErrPermissionDenied,
		transport.ErrUnauthenticated, transport.ErrInvalid, transport.ErrUpgradeNeeded} {
		if errors.Is(err, notServed) {
			return false
		}
	}
	return true
}

// deleteLimits makes one DeleteLimits call on the leader; applied counts
// the attempts that may have applied (all but a follower's NotLeader): more
// than one, with an answer, says a lost answer's attempt may have deleted
// keys too; one or more, with an error, that the call's outcome is unknown.
func deleteLimits(ctx context.Context, e *proc.Admin, req *pb.DeleteLimitsRequest, timeout time.Duration) (
	*pb.DeleteLimitsResponse, int32, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var attempts atomic.Int32 // that may have applied; the calls may overlap
	resp, err := onLeader(ctx, e, func(ctx context.Context, c pb.LeaseholdClient) (*pb.DeleteLimitsResponse, error) {
		resp, err := c.DeleteLimits(ctx, req)
		if mayHaveApplied(err) {
			attempts.Add(1)
		}
		return resp, err
	})
	return resp, attempts.Load(), err
}

// preview lists the keys under the prefix, a page per request, and prints
// the first few it would delete and how many, changing nothing.
func (b *bulkDelete) preview(ctx context.Context, e *proc.Admin, timeout time.Duration, stdout io.Writer) error {
	req := &pb.ListLimitsRequest{Prefix: *b.prefix, PageSize: transport.MaxListPage}
	would, kept := 0, 0
	for {
		pctx, cancel := context.WithTimeout(ctx, timeout)
		resp, err := onLeader(pctx, e, func(ctx context.Context, c pb.LeaseholdClient) (*pb.ListLimitsResponse, error) {
			return c.ListLimits(ctx, req)
		})
		cancel()
		if err != nil {
			return fmt.Errorf("limits delete --prefix --dry-run: %w", err)
		}
		for _, l := range resp.GetLimits() {
			if *b.unpinned && l.GetPinned() {
				kept++
				continue
			}
			if would < bulkDryRunShown {
				fmt.Fprintf(stdout, "would delete %s\n", l.GetKey())
			}
			would++
		}
		if !resp.GetMore() || len(resp.GetLimits()) == 0 {
			break
		}
		req.StartAfter = resp.GetLimits()[len(resp.GetLimits())-1].GetKey()
	}
	if would > bulkDryRunShown {
		fmt.Fprintf(stdout, "... and %d more\n", would-bulkDryRunShown)
	}
	if would+kept == 0 {
		fmt.Fprintf(stdout, "dry run, nothing changed: no key under %q\n", *b.prefix)
		return nil
	}
	fmt.Fprintf(stdout, "dry run, nothing changed: would delete %d keys %s", would, b.what())
	if kept > 0 {
		fmt.Fprintf(stdout, ", keeping %d pinned", kept)
	}
	fmt.Fprintln(stdout)
	return nil
}
