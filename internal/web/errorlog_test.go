package web

import (
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/leasehold/leasehold/internal/pki/pkitest"
	"github.com/leasehold/leasehold/internal/testlog"
)

// TestFailedHandshakesAreLogRateLimited is the regression test for the
// HTTPS port's log flood: net/http logs a line for every failed TLS
// handshake, anyone who reaches the port can fail those, and 3000
// connections in 0.76 s wrote 3005 WARN lines. The server's error log now
// goes through a rate limit: a few lines at once, then one a second,
// each counting the ones left out.
func TestFailedHandshakesAreLogRateLimited(t *testing.T) {
	const conns = 200
	d := pkitest.New(t)
	logs := &testlog.Buffer{}
	_, addr := serve(t, Config{Node: &fakeNode{id: "n1"}, TLS: d.Source(pkitest.Node("n1")),
		Logger: slog.New(slog.NewTextHandler(logs, nil))})
	start := time.Now()
	for range conns {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		// Not a TLS record, nor HTTP (which net/http answers 400 without
		// logging): the handshake fails, is logged, and the server closes.
		if _, err := c.Write(make([]byte, 8)); err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err = io.Copy(io.Discard, c)
		c.Close()
		if err != nil {
			t.Fatalf("the server did not close a connection whose handshake failed: %v", err)
		}
	}
	lines := strings.Count(logs.String(), "TLS handshake error")
	// 5 at once, then one a second since the first.
	if most := 5 + int(time.Since(start)/time.Second); lines == 0 || lines > most {
		t.Errorf("%d lines for %d failed handshakes; want 1 to %d:\n%s", lines, conns, most, logs.String())
	}
}
