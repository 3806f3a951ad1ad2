package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

func runStatus(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	list := fs.String("endpoints", "127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103", "client API addresses")
	asJSON := fs.Bool("json", false, "print one JSON object per node, a line each (the API's field names; integers as numbers)")
	timeout := fs.Duration("timeout", 3*time.Second, "per-node timeout")
	sec := addClientSecurityFlags(fs)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), "usage: leasehold status [flags]\n\n"+
			"Prints each node's view of the cluster. KEYS and SESSIONS are what the state machine holds, out of "+
			"the node's --max-keys and --max-sessions: the leader refuses a new key or client_id at its cap. "+
			"Exits 1 if any node listed did not answer (the table still shows it, unreachable), as a monitoring "+
			"check wants.\n\n")
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args, stdout); err != nil {
		return err
	}
	e, err := dialSecure(*list, sec)
	if err != nil {
		return err
	}
	defer e.Close()

	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	if !*asJSON {
		fmt.Fprintln(tw, "ENDPOINT\tID\tSTATE\tLEADER\tTERM\tAPPLIED\tLOG TIME\tKEYS\tSESSIONS\tLEASES\tRAFT ADDR")
	}
	var unreachable []string
	var firstErr error
	statuses := e.Status(ctx, *timeout)
	for _, st := range statuses {
		if st.Err != nil {
			unreachable = append(unreachable, st.Addr)
			if firstErr == nil {
				firstErr = fmt.Errorf("%s: %w", st.Addr, st.Err)
			}
			if *asJSON {
				b, _ := json.Marshal(map[string]string{"endpoint": st.Addr, "error": st.Err.Error()})
				fmt.Fprintln(stdout, string(b))
			} else {
				fmt.Fprintf(tw, "%s\t-\tunreachable\t-\t-\t-\t-\t-\t-\t-\t%v\n", st.Addr, st.Err)
			}
			continue
		}
		s := st.Status
		if *asJSON {
			obj, err := answerJSON(s)
			if err != nil {
				return err
			}
			obj["endpoint"] = st.Addr
			out, _ := json.Marshal(obj)
			fmt.Fprintln(stdout, string(out))
			continue
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%v\t%s\t%s\t%d\t%s\n", st.Addr, s.NodeId, enumWord(s.GetNodeState().String(), "NODE_STATE_"), s.LeaderId,
			s.Term, s.AppliedIndex, time.Duration(s.LogTimeNs).Round(time.Millisecond), ofCap(s.Keys, s.MaxKeys),
			ofCap(s.Sessions, s.MaxSessions), s.Leases, s.RaftAddr)
	}
	tw.Flush()
	switch {
	case len(unreachable) == len(statuses):
		return withConnHint(fmt.Errorf("no endpoint answered (%w)", firstErr))
	case len(unreachable) > 0:
		return withConnHint(fmt.Errorf("%d of %d endpoints did not answer: %s (%w)", len(unreachable), len(statuses),
			strings.Join(unreachable, ", "), firstErr))
	}
	return nil
}

// ofCap shows held against its cap ("1234/2000000"), so that an operator
// sees how near the leader is to refusing; only held for a node of an
// earlier release, which does not say its cap (0).
func ofCap(held, limit int64) string {
	if limit == 0 {
		return strconv.FormatInt(held, 10)
	}
	return fmt.Sprintf("%d/%d", held, limit)
}
