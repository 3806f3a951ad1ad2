package connlimit

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"
)

// TestAdmitShedsOverTheCapAndGivesSlotsBack: max are admitted, one more is
// closed and counted, and a slot closed (twice) is given back once.
func TestAdmitShedsOverTheCapAndGivesSlotsBack(t *testing.T) {
	l := New(2, slog.New(slog.DiscardHandler), "closed a connection over the limit")
	pipe := func() (net.Conn, net.Conn) {
		a, b := net.Pipe()
		t.Cleanup(func() { a.Close(); b.Close() })
		return a, b
	}
	var admitted []net.Conn
	for range 2 {
		server, _ := pipe()
		c := l.Admit(server)
		if c == nil {
			t.Fatalf("connection %d of a cap of 2 shed", len(admitted)+1)
		}
		admitted = append(admitted, c)
	}
	server, client := pipe()
	if c := l.Admit(server); c != nil {
		t.Fatal("third connection of a cap of 2 admitted")
	}
	if _, err := client.Read(make([]byte, 1)); err == nil {
		t.Error("the shed connection is still open")
	}
	if l.Open() != 2 || l.Shed() != 1 {
		t.Fatalf("open %d, shed %d; want 2, 1", l.Open(), l.Shed())
	}
	admitted[0].Close()
	admitted[0].Close()
	if l.Open() != 1 {
		t.Fatalf("open %d after one closed twice; want 1", l.Open())
	}
	server, _ = pipe()
	if l.Admit(server) == nil {
		t.Fatal("a connection was shed with a slot free")
	}
}

// TestTryAdmitLeavesTheConnectionAtTheCap: at the cap TryAdmit returns nil
// and neither closes nor counts the connection, for another Limit to try.
func TestTryAdmitLeavesTheConnectionAtTheCap(t *testing.T) {
	l := New(1, slog.New(slog.DiscardHandler), "closed a connection over the limit")
	a, _ := net.Pipe()
	b, peer := net.Pipe()
	t.Cleanup(func() { a.Close(); b.Close(); peer.Close() })
	if l.TryAdmit(a) == nil {
		t.Fatal("first connection of a cap of 1 not admitted")
	}
	if l.TryAdmit(b) != nil {
		t.Fatal("second connection of a cap of 1 admitted")
	}
	go b.Write([]byte{1}) // net.Pipe: the write waits for the read
	if _, err := peer.Read(make([]byte, 1)); err != nil {
		t.Errorf("the connection TryAdmit left was closed: %v", err)
	}
	if l.Open() != 1 || l.Shed() != 0 {
		t.Errorf("open %d, shed %d; want 1, 0", l.Open(), l.Shed())
	}
}

// wrapped stands for *tls.Conn: a connection that unwraps with NetConn.
type wrapped struct{ net.Conn }

func (w wrapped) NetConn() net.Conn { return w.Conn }

// TestDisplacingClosesTheLongestIdleNeverABusyOne: at the cap a new
// connection closes the one idle longest (idle from admission, and again
// from the end of its last busy period), never a busy one; with every one
// busy, the new one is shed.
func TestDisplacingClosesTheLongestIdleNeverABusyOne(t *testing.T) {
	l := NewDisplacing(3, slog.New(slog.DiscardHandler), "connection limit reached")
	now := time.Unix(1000, 0)
	l.now = func() time.Time { return now }
	admit := func() (net.Conn, net.Conn) {
		t.Helper()
		server, client := net.Pipe()
		t.Cleanup(func() { server.Close(); client.Close() })
		now = now.Add(time.Second)
		return l.Admit(server), client
	}
	closed := func(client net.Conn) bool {
		_ = client.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
		_, err := client.Read(make([]byte, 1))
		return errors.Is(err, io.EOF) || errors.Is(err, io.ErrClosedPipe)
	}

	a, ac := admit()
	b, bc := admit()
	c, cc := admit()
	if a == nil || b == nil || c == nil {
		t.Fatal("a connection within the cap was shed")
	}
	// a is the longest idle but busy (through a wrapper, as TLS wraps it);
	// c goes busy and idle again, now the most recently idle.
	aIdle := l.Busy(wrapped{a})
	l.Busy(c)()

	d, dc := admit()
	if d == nil {
		t.Fatal("a new connection at the cap was shed with an idle one to close")
	}
	if !closed(bc) || closed(ac) || closed(cc) {
		t.Fatalf("closed a %v, b %v, c %v; want only b, idle longest and not busy", closed(ac), closed(bc), closed(cc))
	}
	if l.Open() != 3 || l.Displaced() != 1 || l.Shed() != 0 {
		t.Fatalf("open %d, displaced %d, shed %d; want 3, 1, 0", l.Open(), l.Displaced(), l.Shed())
	}
	b.Close() // its owner closes it after the displacement: no slot given back twice
	if l.Open() != 3 {
		t.Fatalf("open %d after the displaced one's owner closed it; want 3", l.Open())
	}

	// Once a is idle again it is the most recently idle: c goes first.
	aIdle()
	e, _ := admit()
	if e == nil {
		t.Fatal("shed with idle connections to close")
	}
	if !closed(cc) || closed(ac) || closed(dc) {
		t.Fatalf("closed a %v, c %v, d %v; want only c", closed(ac), closed(cc), closed(dc))
	}

	// Every one busy: the next is shed.
	doneA, doneD := l.Busy(a), l.Busy(d)
	l.Busy(d)() // an overlapping period ends: d is still busy
	eIdle := l.Busy(e)
	if f, fc := admit(); f != nil || !closed(fc) {
		t.Fatal("a new connection displaced a busy one")
	}
	if l.Shed() != 1 {
		t.Fatalf("shed %d; want 1", l.Shed())
	}
	doneA()
	doneD()
	eIdle()
	// Closing gives slots back.
	a.Close()
	d.Close()
	if l.Open() != 1 {
		t.Fatalf("open %d; want 1", l.Open())
	}
}

// TestSheddingLimitIgnoresBusy: a shedding Limit (the client API's) never
// closes an admitted connection for a new one, whatever Busy said.
func TestSheddingLimitIgnoresBusy(t *testing.T) {
	l := New(1, slog.New(slog.DiscardHandler), "closed a connection over the limit")
	s1, c1 := net.Pipe()
	defer s1.Close()
	defer c1.Close()
	a := l.Admit(s1)
	l.Busy(a)()
	s2, c2 := net.Pipe()
	defer s2.Close()
	defer c2.Close()
	if l.Admit(s2) != nil {
		t.Fatal("a shedding Limit admitted one over the cap")
	}
	if l.Displaced() != 0 || l.Shed() != 1 {
		t.Fatalf("displaced %d, shed %d; want 0, 1", l.Displaced(), l.Shed())
	}
}

// TestReleaseGivesTheSlotBackAndKeepsTheConnection: a released connection
// stays open, is no longer counted or displaced, and closing it later
// gives nothing back; one displaced or closed first cannot be released.
func TestReleaseGivesTheSlotBackAndKeepsTheConnection(t *testing.T) {
	for _, l := range []*Limit{
		New(2, slog.New(slog.DiscardHandler), "shed"),
		NewDisplacing(2, slog.New(slog.DiscardHandler), "displaced"),
	} {
		admit := func() (net.Conn, net.Conn) {
			t.Helper()
			server, client := net.Pipe()
			t.Cleanup(func() { server.Close(); client.Close() })
			return l.Admit(server), client
		}
		a, ac := admit()
		b, _ := admit()
		if !l.Release(a) || l.Open() != 1 {
			t.Fatalf("displace %v: Release = false or open %d; want true, 1", l.displace, l.Open())
		}
		if l.Release(a) {
			t.Errorf("displace %v: a connection released twice", l.displace)
		}
		go a.Write([]byte{1}) // net.Pipe: the write waits for the read
		if _, err := ac.Read(make([]byte, 1)); err != nil {
			t.Fatalf("displace %v: the released connection: %v", l.displace, err)
		}
		c, _ := admit()
		if c == nil {
			t.Fatalf("displace %v: shed with a slot released", l.displace)
		}
		a.Close()
		if l.Open() != 2 || l.Displaced() != 0 {
			t.Fatalf("displace %v: open %d, displaced %d after closing the released one; want 2, 0", l.displace, l.Open(), l.Displaced())
		}
		b.Close()
		if l.Release(b) {
			t.Errorf("displace %v: a closed connection released", l.displace)
		}
	}
	// Displaced first: no slot to release.
	l := NewDisplacing(1, slog.New(slog.DiscardHandler), "displaced")
	s1, c1 := net.Pipe()
	defer c1.Close()
	a := l.Admit(s1)
	s2, c2 := net.Pipe()
	defer s2.Close()
	defer c2.Close()
	l.Admit(s2)
	if l.Release(a) || l.Open() != 1 {
		t.Errorf("Release of a displaced connection = true or open %d; want false, 1", l.Open())
	}
}
