package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

// runMembers prints the cluster's members as the leader sees them (the
// Members RPC, operator role): the Raft configuration joined with gossip
// and health, each member's build as it gossips it, and the failure
// tolerance.
func runMembers(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("members", flag.ContinueOnError)
	list := fs.String("endpoints", "127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103", "client API addresses; any one that answers will do")
	asJSON := fs.Bool("json", false, "print the leader's answer as one JSON object (the API's field names; integers as numbers)")
	timeout := fs.Duration("timeout", 10*time.Second, "how long to try")
	sec := addClientSecurityFlags(fs)
	if err := parseFlags(fs, args, stdout); err != nil {
		return err
	}
	e, err := dialSecure(*list, sec)
	if err != nil {
		return err
	}
	defer e.Close()
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	resp, err := onLeader(ctx, e, func(ctx context.Context, c pb.LeaseholdClient) (*pb.MembersResponse, error) {
		return c.Members(ctx, &pb.MembersRequest{})
	})
	if err != nil {
		return err
	}
	if *asJSON {
		obj, err := answerJSON(resp)
		if err != nil {
			return err
		}
		b, err := json.Marshal(obj)
		if err != nil {
			return err
		}
		fmt.Fprintln(stdout, string(b))
		return nil
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSUFFRAGE\tGOSSIP\tLEADER\tHEALTHY\tLAST CONTACT\tLAST INDEX\tRAFT\tCLIENT\tGOSSIP ADDR\tVERSION")
	for _, m := range resp.GetMembers() {
		contact := "-"
		if m.GetLastContactNs() >= 0 {
			contact = time.Duration(m.GetLastContactNs()).Round(time.Millisecond).String()
		}
		leader := ""
		if m.GetLeader() {
			leader = "*"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%v\t%s\t%d\t%s\t%s\t%s\t%s\n", m.GetId(), enumWord(m.GetSuffrage().String(), "SUFFRAGE_"),
			enumWord(m.GetGossipState().String(), "GOSSIP_STATE_"), leader, m.GetHealthy(), contact, m.GetLastIndex(),
			dash(m.GetRaftAddr()), dash(m.GetClientAddr()), dash(m.GetGossipAddr()), dash(m.GetVersion()))
	}
	tw.Flush()
	fmt.Fprintf(stdout, "leader %s; failure tolerance %d; healthy %v\n", resp.GetLeaderId(), resp.GetFailureTolerance(), resp.GetHealthy())
	return nil
}

// runRemove removes a member from the Raft configuration (RemoveMember on
// the leader, operator role).
func runRemove(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("remove", flag.ContinueOnError)
	list := fs.String("endpoints", "127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103", "client API addresses; any one that answers will do")
	force := fs.Bool("force", false, "remove even if the voters left would not include a quorum of healthy ones")
	timeout := fs.Duration("timeout", 30*time.Second, "how long to try")
	sec := addClientSecurityFlags(fs)
	if err := parseFlags(fs, args, stdout); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		return &usageError{errors.New("usage: leasehold remove [flags] ID (leasehold members lists the ids)")}
	}
	id := fs.Arg(0)
	if err := parseFlags(fs, fs.Args()[1:], stdout); err != nil { // flags after the id
		return err
	}
	if fs.NArg() > 0 {
		return &usageError{fmt.Errorf("unexpected arguments %q after the ID %s", fs.Args(), id)}
	}
	e, err := dialSecure(*list, sec)
	if err != nil {
		return err
	}
	defer e.Close()
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	resp, err := onLeader(ctx, e, func(ctx context.Context, c pb.LeaseholdClient) (*pb.RemoveMemberResponse, error) {
		return c.RemoveMember(ctx, &pb.RemoveMemberRequest{Id: id, Force: *force})
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "removed %s (configuration index %d)\n", id, resp.GetIndex())
	return nil
}

func enumWord(s, prefix string) string { return strings.ToLower(strings.TrimPrefix(s, prefix)) }

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
