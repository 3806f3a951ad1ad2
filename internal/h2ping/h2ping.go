// Package h2ping counts the HTTP/2 PING frames that cross a connection, for
// tests that check that gRPC's flow control sends none
// (transport.ServerOptions, transport.DialOptions). It reads the frame
// headers only, and only in plain text.
package h2ping

import (
	"bytes"
	"encoding/binary"
	"net"
	"sync"
)

// clientPreface opens every HTTP/2 client's stream.
const clientPreface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

const (
	frameHeaderLen = 9
	framePing      = 0x6
	flagAck        = 0x1
)

// Conn is a net.Conn that keeps a copy of every byte read and written. It is
// safe for concurrent use, as a net.Conn is.
type Conn struct {
	net.Conn
	mu struct {
		sync.Mutex
		read, written []byte
	}
}

// Wrap returns c, recording.
func Wrap(c net.Conn) *Conn { return &Conn{Conn: c} }

func (c *Conn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.mu.Lock()
	c.mu.read = append(c.mu.read, b[:n]...)
	c.mu.Unlock()
	return n, err
}

func (c *Conn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.mu.Lock()
	c.mu.written = append(c.mu.written, b[:n]...)
	c.mu.Unlock()
	return n, err
}

// Pings returns how many PING frames, not counting acknowledgements, were
// written and read so far. A frame not yet whole is not counted.
func (c *Conn) Pings() (written, read int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return Count(c.mu.written), Count(c.mu.read)
}

// Count returns how many PING frames, not counting acknowledgements, the
// HTTP/2 byte stream b holds (one direction of a connection, from its
// start; a client's preface is skipped).
func Count(b []byte) int {
	b, _ = bytes.CutPrefix(b, []byte(clientPreface))
	n := 0
	for len(b) >= frameHeaderLen {
		length := int(b[0])<<16 | int(binary.BigEndian.Uint16(b[1:3]))
		typ, flags := b[3], b[4]
		if len(b) < frameHeaderLen+length {
			break
		}
		if typ == framePing && flags&flagAck == 0 {
			n++
		}
		b = b[frameHeaderLen+length:]
	}
	return n
}
