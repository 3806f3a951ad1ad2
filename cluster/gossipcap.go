package cluster

import (
	"fmt"
	"log"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"

	"github.com/leasehold/leasehold/internal/connlimit"
	"github.com/leasehold/leasehold/internal/ratelog"
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

// maxGossipStreamBytes bounds what the node reads from one incoming gossip
// stream. memberlist reads a stream's whole message before it can decrypt
// it, up to the 20 MiB its length prefix may claim, so anyone who reaches
// the port, with no key, made a node buffer 20 MiB (~80 MB of heap) per
// connection. A stream carries one message, the largest a push-pull: ~310
// bytes per member with Leasehold's meta as it is (measured: 2,543 bytes
// for 8 members before compression, 1,144 after), ~640 with the meta at
// memberlist's 512-byte limit and a 64-byte id; Leasehold sends no user
// state with it. 256 KiB holds one from over 400 members at that worst, and
// a reliable message (a few KB with a certificate chain) with room to spare.
const maxGossipStreamBytes = 256 << 10

// cappedTransport is memberlist's own network transport whose incoming
// streams pass through a displacing connlimit.Limit of max: a connection
// accepted while max are being handled closes the one open longest (its
// descriptor freed), logged, rate-limited; memberlist closing a stream
// gives its slot back. Closing the oldest, not refusing the newest:
// connections that say nothing, renewed as memberlist times them out, kept
// every push-pull and join out (TestHeldGossipStreamsDoNotKeepPushPullOut);
// a member's stream lasts milliseconds, so a flood must now open max
// connections within that time to close it. A stream read past
// maxGossipStreamBytes fails (streamBound). Packets (UDP) are not
// affected.
type cappedTransport struct {
	*memberlist.NetTransport
	limit   *connlimit.Limit
	log     *slog.Logger
	overLog *ratelog.Limiter
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
		limit: connlimit.NewDisplacing(max, logger, "gossip: stream connection limit reached"),
		log:   logger, overLog: ratelog.New(time.Second, 5)}
	t.wg.Add(1)
	go t.pass()
	return t, nil
}

// pass takes each stream memberlist's transport accepted and hands it on,
// bounded, in place of the oldest when max are open, until Shutdown.
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
			case t.streams <- &streamBound{Conn: c, left: maxGossipStreamBytes, t: t}:
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

// streamBound is an incoming stream whose reads fail once left bytes have
// been read: memberlist then gives up on the message (logging and
// answering the error) and closes the stream. A byte budget, not a check
// of the length prefix, because it holds for every message memberlist
// reads from a stream (encrypted, plain, compressed, user messages, pings)
// without parsing any of them. memberlist reads a stream from one
// goroutine.
type streamBound struct {
	net.Conn
	left int64
	t    *cappedTransport
	over bool
}

func (s *streamBound) Read(p []byte) (int, error) {
	if s.left <= 0 {
		if !s.over {
			s.over = true
			s.t.overLog.Log(s.t.log, slog.LevelWarn, "gossip: stream over its size limit closed",
				"remote", s.RemoteAddr().String(), "limit_bytes", maxGossipStreamBytes)
		}
		return 0, fmt.Errorf("gossip stream longer than %d bytes", maxGossipStreamBytes)
	}
	if int64(len(p)) > s.left {
		p = p[:s.left]
	}
	n, err := s.Conn.Read(p)
	s.left -= int64(n)
	return n, err
}
