package cluster

import (
	"log"
	"log/slog"
	"net"
	"sync"

	"github.com/hashicorp/memberlist"

	"github.com/leasehold/leasehold/internal/connlimit"
)

// maxGossipStreams bounds the gossip TCP connections a node handles at
// once. memberlist handles each accepted connection on a goroutine of its
// own for up to its TCP timeout (1s with the loopback timings, 10s with
// the LAN ones), with no bound: 600 connections from anyone who can reach
// the port exhausted a node limited to 300 file descriptors, and with them
// its client API and Raft. A member opens a stream for a push-pull sync
// (every 15–30s per member), a join, a reliable message and a TCP probe
// fallback, each done in milliseconds, so a cluster's own use is a few at
// a time.
const maxGossipStreams = 64

// cappedTransport is memberlist's own network transport whose incoming
// streams pass through a displacing connlimit.Limit of max: a connection
// accepted while max are being handled closes the one open longest (its
// descriptor freed), logged, rate-limited; memberlist closing a stream
// gives its slot back. Closing the oldest, not refusing the newest:
// connections that say nothing, renewed as memberlist times them out, kept
// every push-pull and join out (TestHeldGossipStreamsDoNotKeepPushPullOut);
// a member's stream lasts milliseconds, so a flood must now open max
// connections within that time to close it. Packets (UDP) are not
// affected.
type cappedTransport struct {
	*memberlist.NetTransport
	limit   *connlimit.Limit
	streams chan net.Conn
	done    chan struct{}
	stopped sync.Once
	wg      sync.WaitGroup
}

// newCappedTransport binds memberlist's network transport to host:port
// (port 0: a free port, GetAutoBindPort) and starts the goroutine that
// passes its streams on; Shutdown stops both.
func newCappedTransport(host string, port, max int, logger *slog.Logger, mlLogger *log.Logger) (*cappedTransport, error) {
	nt, err := memberlist.NewNetTransport(&memberlist.NetTransportConfig{
		BindAddrs: []string{host}, BindPort: port, Logger: mlLogger})
	if err != nil {
		return nil, err
	}
	t := &cappedTransport{NetTransport: nt, streams: make(chan net.Conn), done: make(chan struct{}),
		limit: connlimit.NewDisplacing(max, logger, "gossip: stream connection limit reached")}
	t.wg.Add(1)
	go t.pass()
	return t, nil
}

// pass takes each stream memberlist's transport accepted and hands it on,
// in place of the oldest when max are open, until Shutdown.
func (t *cappedTransport) pass() {
	defer t.wg.Done()
	in := t.NetTransport.StreamCh()
	for {
		select {
		case <-t.done:
			return
		case c := <-in:
			if c = t.limit.Admit(c); c == nil {
				continue
			}
			select {
			case t.streams <- c:
			case <-t.done:
				_ = c.Close()
				return
			}
		}
	}
}

// StreamCh is memberlist.Transport's: the streams within the cap.
func (t *cappedTransport) StreamCh() <-chan net.Conn { return t.streams }

// Shutdown shuts memberlist's transport down and stops pass.
func (t *cappedTransport) Shutdown() error {
	err := t.NetTransport.Shutdown()
	t.stopped.Do(func() { close(t.done) })
	t.wg.Wait()
	return err
}
