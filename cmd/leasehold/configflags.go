package main

import "regexp"

// configFlagNames rewrites the Go names that cluster.Config.Validate and
// transport.NewGuard give a field as the serve flag that sets it, so that
// an operator reads the flag typed. Those texts are for the Go API too, so
// they keep their names and serve maps them here. In order: a peer's own
// ID and RaftAddr before --id and --raft-addr. A field no flag sets is
// left as it is.
var configFlagNames = []struct {
	field *regexp.Regexp
	flag  string
}{
	{regexp.MustCompile(`\bPeers\[\d+\]: ID ("[^"]*")`), `--peers: $1`},
	{regexp.MustCompile(`\bPeers\[\d+\] \(("[^"]*")\): RaftAddr\b`), `--peers: $1 at`},
	{regexp.MustCompile(`\bPeers\[\d+\]`), `--peers`},
	{regexp.MustCompile(`\bPeers\b`), `--peers`},
	{regexp.MustCompile(`\bDialAddrs\["([^"]*)"\] `), `--raft-dial $1=`},
	{regexp.MustCompile(`\bRaftAddr\b`), `--raft-addr`},
	{regexp.MustCompile(`\bHeartbeatTimeout\b`), `--heartbeat-timeout`},
	{regexp.MustCompile(`\bElectionTimeout\b`), `--election-timeout`},
	{regexp.MustCompile(`\bLeaderLeaseTimeout\b`), `--leader-lease-timeout`},
	{regexp.MustCompile(`\bGossip\.AdvertiseAddr\b`), `--gossip-advertise`},
	{regexp.MustCompile(`\b(Gossip\.)?BindAddr\b`), `--gossip-addr`},
	{regexp.MustCompile(`\bGossip\.Join\[\d+\]`), `--join`},
	{regexp.MustCompile(`\bGossip\.BootstrapExpect\b`), `--bootstrap-expect`},
	{regexp.MustCompile(`\bGossip\.DeadServerTimeout\b`), `--dead-server-timeout`},
	{regexp.MustCompile(`\bGossip\.StabilizationTime\b`), `--server-stabilization-time`},
	{regexp.MustCompile(`\bMaxInFlight\b`), `--max-in-flight`},
	{regexp.MustCompile(`\bMaxConns\b`), `--max-conns`},
	{regexp.MustCompile(`\bMaxKeys\b`), `--max-keys`},
	{regexp.MustCompile(`\bMaxSessions\b`), `--max-sessions`},
}

// withFlagNames returns err with the config fields it names as serve's
// flags (configFlagNames), still wrapping err; nil for nil.
func withFlagNames(err error) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	for _, n := range configFlagNames {
		msg = n.field.ReplaceAllString(msg, n.flag)
	}
	return &flagNamedError{msg: msg, err: err}
}

// flagNamedError is an error whose text names flags where err's names
// fields.
type flagNamedError struct {
	msg string
	err error
}

func (e *flagNamedError) Error() string { return e.msg }
func (e *flagNamedError) Unwrap() error { return e.err }
