package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
)

func runStatus(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	list := fs.String("endpoints", "127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103", "client API addresses")
	asJSON := fs.Bool("json", false, "print one JSON object per line")
	timeout := fs.Duration("timeout", 3*time.Second, "per-node timeout")
	sec := addClientSecurityFlags(fs)
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
		fmt.Fprintln(tw, "ENDPOINT\tID\tSTATE\tLEADER\tTERM\tAPPLIED\tLOG TIME\tKEYS\tLEASES\tRAFT ADDR")
	}
	reachable := 0
	var firstErr error
	for _, st := range e.Status(ctx, *timeout) {
		if st.Err != nil {
			if firstErr == nil {
				firstErr = fmt.Errorf("%s: %w", st.Addr, st.Err)
			}
			if *asJSON {
				b, _ := json.Marshal(map[string]string{"endpoint": st.Addr, "error": st.Err.Error()})
				fmt.Fprintln(stdout, string(b))
			} else {
				fmt.Fprintf(tw, "%s\t-\tunreachable\t-\t-\t-\t-\t-\t-\t%v\n", st.Addr, st.Err)
			}
			continue
		}
		reachable++
		s := st.Status
		if *asJSON {
			b, err := protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true}.Marshal(s)
			if err != nil {
				return err
			}
			var obj map[string]any
			if err := json.Unmarshal(b, &obj); err != nil {
				return err
			}
			obj["endpoint"] = st.Addr
			out, _ := json.Marshal(obj)
			fmt.Fprintln(stdout, string(out))
			continue
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%v\t%d\t%d\t%s\n", st.Addr, s.NodeId, enumWord(s.GetNodeState().String(), "NODE_STATE_"), s.LeaderId,
			s.Term, s.AppliedIndex, time.Duration(s.LogTimeNs).Round(time.Millisecond), s.Keys, s.Leases, s.RaftAddr)
	}
	tw.Flush()
	if reachable == 0 {
		return withConnHint(fmt.Errorf("no endpoint answered (%w)", firstErr))
	}
	return nil
}
