// Package connlimit caps the connections a server handles at once, so that
// anyone who can reach a port cannot take the process's file descriptors,
// and with them its other ports. The client API (transport's Guard), the
// HTTP listener (internal/web) and the gossip port (cluster) each hold one.
// An admitted connection gives its slot back when it is closed.
//
// At the cap a Limit does one of two things with a new connection:
//
//   - New: it sheds the new one (closes it at once, counts and logs it,
//     rate-limited). The client API uses this for connections past their
//     handshake: SDK connections are long-lived and idle between lease
//     refreshes, and each carries a client's leases; closing an
//     established client to make room for whoever connected last would
//     let anyone with a certificate disconnect the real clients, one by
//     one, while shedding the newcomer keeps them.
//   - NewDisplacing: it makes room by closing the connection that has been
//     idle longest (see Busy), and sheds the new one only when every one is
//     busy. The HTTP listener (probes, idle by nature between requests),
//     the gossip port (each stream a short exchange) and the client API's
//     connections still in their handshake use this: with shedding,
//     connections that say nothing, renewed as they time out, kept every
//     new one out, probes, push-pull syncs and clients included; with
//     displacing, a newcomer is the last to go, and a flood must open max
//     connections within the newcomer's own exchange to close it.
//
// A connection can leave a Limit without closing (Release): the client
// API releases each one from its handshake cap once the handshake is done
// and admits it to its shedding cap.
package connlimit

import (
	"container/list"
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
	max      int64
	displace bool
	msg      string
	log      *slog.Logger
	rl       *ratelog.Limiter
	open     atomic.Int64
	shed     atomic.Uint64
	ousted   atomic.Uint64
	now      func() time.Time // time.Now; a test seam

	// mu guards the tracking of a displacing Limit (open is changed under
	// it there too); a shedding one never takes it.
	mu struct {
		sync.Mutex
		idle list.List // of *conn not busy, the longest idle first
	}
}

// New returns a Limit of max open connections (max ≥ 1) that sheds a
// connection over the cap, and logs each one it sheds to log as msg (at
// most 5 lines a second, then a count), with the remote address, max_conns
// and shed_total.
func New(max int, log *slog.Logger, msg string) *Limit {
	return &Limit{max: int64(max), msg: msg, log: log, rl: ratelog.New(time.Second, 5), now: time.Now}
}

// NewDisplacing returns a Limit of max open connections (max ≥ 1) that,
// at the cap, closes the admitted connection idle longest to admit the new
// one. A connection is idle from its admission, and again from the end of
// each Busy period; a busy one is never closed. With every one busy, the
// new one is shed. Each displacement and shed is logged to log as msg (at
// most 5 lines a second, then a count), with the remote addresses,
// max_conns and displaced_total or shed_total.
func NewDisplacing(max int, log *slog.Logger, msg string) *Limit {
	l := New(max, log, msg)
	l.displace = true
	return l
}

// Admit returns c wrapped so that closing it gives its slot back, once. At
// the cap, a shedding Limit closes c, counts and logs it, and returns nil;
// a displacing one first closes the connection idle longest, if one is
// idle, in its place.
func (l *Limit) Admit(c net.Conn) net.Conn {
	if l.displace {
		return l.admitDisplacing(c)
	}
	if l.open.Add(1) <= l.max {
		return &conn{Conn: c, l: l}
	}
	l.open.Add(-1)
	l.shedConn(c)
	return nil
}

// TryAdmit is a shedding Limit's Admit that, at the cap, leaves c open and
// uncounted and returns nil, for a caller with another Limit to try.
func (l *Limit) TryAdmit(c net.Conn) net.Conn {
	if l.displace {
		panic("connlimit: TryAdmit on a displacing Limit")
	}
	if l.open.Add(1) <= l.max {
		return &conn{Conn: c, l: l}
	}
	l.open.Add(-1)
	return nil
}

// shedConn closes c, over the cap, and counts and logs it.
func (l *Limit) shedConn(c net.Conn) {
	remote := c.RemoteAddr().String()
	_ = c.Close()
	total := l.shed.Add(1)
	l.rl.Log(l.log, slog.LevelWarn, l.msg, "remote", remote, "max_conns", l.max, "shed_total", total)
}

func (l *Limit) admitDisplacing(c net.Conn) net.Conn {
	w := &conn{Conn: c, l: l, tracked: true}
	l.mu.Lock()
	now := l.now()
	var victim *conn
	if l.open.Load() >= l.max {
		front := l.mu.idle.Front()
		if front == nil {
			l.mu.Unlock()
			l.shedConn(c)
			return nil
		}
		victim = front.Value.(*conn)
		l.untrackLocked(victim) // its slot is w's now
	}
	l.open.Add(1)
	w.since = now
	w.elem = l.mu.idle.PushBack(w)
	l.mu.Unlock()
	if victim != nil {
		idle := now.Sub(victim.since)
		_ = victim.Conn.Close()
		total := l.ousted.Add(1)
		l.rl.Log(l.log, slog.LevelWarn, l.msg, "closed", victim.RemoteAddr().String(), "idle", idle.Round(time.Millisecond),
			"for", c.RemoteAddr().String(), "max_conns", l.max, "displaced_total", total)
	}
	return w
}

// untrackLocked forgets w and takes its slot back.
func (l *Limit) untrackLocked(w *conn) {
	if !w.tracked {
		return
	}
	w.tracked = false
	if w.elem != nil {
		l.mu.idle.Remove(w.elem)
		w.elem = nil
	}
	l.open.Add(-1)
}

// Busy marks c busy (serving a request: a displacing Limit never closes
// it) until the function it returns is called, from when c is idle again.
// Busy periods may overlap (an HTTP/2 connection's streams): c is idle when
// none is open. c is a connection Admit returned, or one that wraps it and
// unwraps with a NetConn method (*tls.Conn); for any other connection, or
// a shedding Limit, Busy does nothing.
func (l *Limit) Busy(c net.Conn) (idle func()) {
	w := l.find(c)
	if w == nil {
		return func() {}
	}
	l.mu.Lock()
	if w.tracked {
		w.busy++
		if w.elem != nil {
			l.mu.idle.Remove(w.elem)
			w.elem = nil
		}
	}
	l.mu.Unlock()
	return func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		if !w.tracked {
			return
		}
		if w.busy--; w.busy == 0 {
			w.since = l.now()
			w.elem = l.mu.idle.PushBack(w)
		}
	}
}

// find returns the connection of l that c is or wraps, or nil.
func (l *Limit) find(c net.Conn) *conn {
	if !l.displace {
		return nil
	}
	for c != nil {
		if w, ok := c.(*conn); ok {
			if w.l == l {
				return w
			}
			return nil
		}
		u, ok := c.(interface{ NetConn() net.Conn })
		if !ok {
			return nil
		}
		c = u.NetConn()
	}
	return nil
}

// Open returns the connections admitted and not yet closed (or displaced).
func (l *Limit) Open() int64 { return l.open.Load() }

// Shed returns the connections closed at once because max were open (and,
// for a displacing Limit, all of them busy).
func (l *Limit) Shed() uint64 { return l.shed.Load() }

// Displaced returns the connections a displacing Limit closed to admit a
// new one.
func (l *Limit) Displaced() uint64 { return l.ousted.Load() }

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

// Release gives the slot of c, a connection Admit returned, back without
// closing c: from then on l neither counts nor displaces it, and closing
// it gives nothing back. It reports whether c still held its slot: false
// if it was closed or displaced already. A server that caps connections
// in one stage of their life (transport's handshakes) releases each one
// as it leaves that stage.
func (l *Limit) Release(c net.Conn) bool {
	w, ok := c.(*conn)
	if !ok || w.l != l {
		return false
	}
	return w.giveBack()
}

// conn gives its slot back when closed or released, once. The fields after
// released are a displacing Limit's, guarded by its mu.
type conn struct {
	net.Conn
	l        *Limit
	released atomic.Bool // a shedding Limit's slot given back

	tracked bool          // counted in l.open
	busy    int           // Busy periods open
	since   time.Time     // idle since (when busy is 0)
	elem    *list.Element // in l.mu.idle, when tracked and not busy
}

func (c *conn) Close() error {
	c.giveBack()
	return c.Conn.Close()
}

// giveBack gives c's slot back, if it still holds one, and reports
// whether it did.
func (c *conn) giveBack() bool {
	if !c.l.displace {
		if !c.released.CompareAndSwap(false, true) {
			return false
		}
		c.l.open.Add(-1)
		return true
	}
	c.l.mu.Lock()
	defer c.l.mu.Unlock()
	held := c.tracked
	c.l.untrackLocked(c)
	return held
}
