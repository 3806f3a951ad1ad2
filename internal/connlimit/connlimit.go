// Package connlimit caps the connections a server handles at once: a
// connection admitted beyond the cap is closed at once (its file
// descriptor freed), counted and logged, rate-limited; an admitted one
// gives its slot back when it is closed. The client API (transport's
// Guard), the HTTP listener (internal/web) and the gossip port (cluster)
// each hold one, so that anyone who can reach a port cannot take the
// process's file descriptors, and with them its other ports.
package connlimit

import (
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/leasehold/leasehold/internal/ratelog"
)

// Limit counts the open connections of one port. It is safe for
// concurrent use.
type Limit struct {
	max  int64
	msg  string
	log  *slog.Logger
	rl   *ratelog.Limiter
	open atomic.Int64
	shed atomic.Uint64
}

// New returns a Limit of max open connections (max ≥ 1) that logs each
// connection it sheds to log as msg (at most 5 lines a second, then a
// count), with the remote address, max_conns and shed_total.
func New(max int, log *slog.Logger, msg string) *Limit {
	return &Limit{max: int64(max), msg: msg, log: log, rl: ratelog.New(time.Second, 5)}
}

// Admit returns c wrapped so that closing it gives its slot back, once; or,
// with max already open, closes c, counts and logs it, and returns nil.
func (l *Limit) Admit(c net.Conn) net.Conn {
	if l.open.Add(1) <= l.max {
		return &conn{Conn: c, l: l}
	}
	l.open.Add(-1)
	remote := c.RemoteAddr().String()
	_ = c.Close()
	total := l.shed.Add(1)
	l.rl.Log(l.log, slog.LevelWarn, l.msg, "remote", remote, "max_conns", l.max, "shed_total", total)
	return nil
}

// Open returns the connections admitted and not yet closed.
func (l *Limit) Open() int64 { return l.open.Load() }

// Shed returns the connections closed because max were open.
func (l *Limit) Shed() uint64 { return l.shed.Load() }

// Listener returns ln whose Accept admits each connection through l, and
// waits for the next in place of one it shed. Accept's errors are ln's.
func (l *Limit) Listener(ln net.Listener) net.Listener { return &listener{Listener: ln, l: l} }

type listener struct {
	net.Listener
	l *Limit
}

func (ln *listener) Accept() (net.Conn, error) {
	for {
		c, err := ln.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if c = ln.l.Admit(c); c != nil {
			return c, nil
		}
	}
}

// conn gives its slot back when closed, once however often Close is
// called.
type conn struct {
	net.Conn
	l    *Limit
	once sync.Once
}

func (c *conn) Close() error {
	c.once.Do(func() { c.l.open.Add(-1) })
	return c.Conn.Close()
}
