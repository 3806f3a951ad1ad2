package web

import (
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/leasehold/leasehold/internal/ratelog"
)

// connLimit is a listener that keeps at most max connections open: one
// more is closed as soon as it is accepted, and logged (rate-limited).
// /healthz and /readyz need no certificate, so without it anyone who
// reaches the port could hold connections until the process ran out of
// file descriptors, and with it its client API, Raft, gossip and disk
// check (TestHTTPConnectionsAreCapped). It is safe for concurrent use.
type connLimit struct {
	net.Listener
	max  int64
	log  *slog.Logger
	rl   *ratelog.Limiter
	open atomic.Int64
	shed atomic.Uint64
}

func newConnLimit(ln net.Listener, max int, log *slog.Logger) *connLimit {
	return &connLimit{Listener: ln, max: int64(max), log: log, rl: ratelog.New(time.Second, 5)}
}

// Accept returns the next connection within the limit, closing the ones
// beyond it.
func (l *connLimit) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if l.open.Add(1) <= l.max {
			return &limitedConn{Conn: c, l: l}, nil
		}
		l.open.Add(-1)
		remote := c.RemoteAddr().String()
		c.Close()
		total := l.shed.Add(1)
		l.rl.Log(l.log, slog.LevelWarn, "http: closed a connection over the limit", "remote", remote,
			"max_conns", l.max, "shed_total", total)
	}
}

// limitedConn gives its slot back when closed.
type limitedConn struct {
	net.Conn
	l    *connLimit
	once sync.Once
}

func (c *limitedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.l.open.Add(-1) })
	return err
}
