package transport

import "google.golang.org/grpc"

// gRPC flow-control windows of this API, in bytes, on both ends of a
// connection (ServerOptions, DialOptions). Setting them fixes the windows:
// gRPC's dynamic window sizing (its bandwidth-delay estimator) is off.
//
// That estimator sends a PING on a connection whenever data arrives and no
// PING of its is outstanding, and the other end answers it: at one call in
// flight, about one more frame each way per call, each a write, a wake-up
// and a read on both ends, on top of the call's own two messages. It pays
// for large messages on long links, which this API does not carry: a
// request is at most MaxRequestBytes, an answer a few hundred bytes. Fixed
// windows removed about half of a client's reads at one call in flight
// and, with 8 clients of one call each against a 3-node cluster on 2 cores,
// about 12% of the leader's and 25% of the client's CPU per decision
// (cluster/DESIGN.md, "Where a decision's time goes").
const (
	// StreamWindowBytes is each call's window: four of the largest
	// requests. gRPC's own initial window is the same size.
	StreamWindowBytes = 64 << 10
	// ConnWindowBytes is a connection's window, shared by its calls: room
	// for 64 of the largest requests at once. The dynamic sizing it
	// replaces could grow a connection's window to 16 MiB.
	ConnWindowBytes = 1 << 20
)

// DialOptions returns the options a client of this API dials with: the
// fixed flow-control windows (StreamWindowBytes, ConnWindowBytes). The SDK
// (package client) uses them; options given after them override them.
func DialOptions() []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithStaticStreamWindowSize(StreamWindowBytes),
		grpc.WithStaticConnWindowSize(ConnWindowBytes),
	}
}
