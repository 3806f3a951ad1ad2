package connlimit

import (
	"log/slog"
	"net"
	"testing"
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
