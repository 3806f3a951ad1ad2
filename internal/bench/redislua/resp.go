package redislua

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"time"
)

// Conn is one RESP2 connection to a Redis server: just enough of the
// protocol to load a script, call it and wait for replicas (SCRIPT LOAD,
// EVALSHA, WAIT, PING, SET).
// Commands are sent one at a time and each waits for its reply, as a client
// that decides one request at a time does. A Conn is not safe for
// concurrent use; use one per goroutine.
type Conn struct {
	nc  net.Conn
	r   *bufio.Reader
	w   *bufio.Writer
	buf []byte // scratch for formatting integers
}

// Error is an error reply from the server (a RESP "-" line), such as
// "NOSCRIPT No matching script".
type Error string

func (e Error) Error() string { return "redis: " + string(e) }

// Dial connects to the Redis server at addr (host:port).
func Dial(ctx context.Context, addr string) (*Conn, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	if tc, ok := nc.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true) // the default in Go; stated, as latency matters here
	}
	return &Conn{nc: nc, r: bufio.NewReaderSize(nc, 4096), w: bufio.NewWriterSize(nc, 4096)}, nil
}

// Close closes the connection.
func (c *Conn) Close() error { return c.nc.Close() }

// SetDeadline bounds every read and write until it is changed; the zero
// time removes the bound.
func (c *Conn) SetDeadline(t time.Time) error { return c.nc.SetDeadline(t) }

// Do sends one command (its name and arguments as bulk strings) and returns
// the reply: string for a simple or bulk string, nil for a null, int64 for
// an integer, []any for an array, or an Error for an error reply (returned
// as the error, with a nil value).
func (c *Conn) Do(args ...string) (any, error) {
	c.writeArray(len(args))
	for _, a := range args {
		c.writeBulk(a)
	}
	if err := c.w.Flush(); err != nil {
		return nil, err
	}
	return c.read()
}

// DoInts is Do for commands whose arguments are a few strings followed by
// integers, formatted without allocating.
func (c *Conn) DoInts(strs []string, ints []int64) (any, error) {
	c.writeArray(len(strs) + len(ints))
	for _, a := range strs {
		c.writeBulk(a)
	}
	for _, n := range ints {
		c.buf = strconv.AppendInt(c.buf[:0], n, 10)
		c.writeBulkBytes(c.buf)
	}
	if err := c.w.Flush(); err != nil {
		return nil, err
	}
	return c.read()
}

func (c *Conn) writeArray(n int) {
	c.w.WriteByte('*')
	c.buf = strconv.AppendInt(c.buf[:0], int64(n), 10)
	c.w.Write(c.buf)
	c.w.WriteString("\r\n")
}

func (c *Conn) writeBulk(s string) {
	c.w.WriteByte('$')
	c.buf = strconv.AppendInt(c.buf[:0], int64(len(s)), 10)
	c.w.Write(c.buf)
	c.w.WriteString("\r\n")
	c.w.WriteString(s)
	c.w.WriteString("\r\n")
}

func (c *Conn) writeBulkBytes(b []byte) {
	var n [20]byte
	c.w.WriteByte('$')
	c.w.Write(strconv.AppendInt(n[:0], int64(len(b)), 10))
	c.w.WriteString("\r\n")
	c.w.Write(b)
	c.w.WriteString("\r\n")
}

// maxBulk bounds the length of a bulk string or array this client accepts,
// so that a corrupt length cannot make it allocate gigabytes.
const maxBulk = 64 << 20

var errProtocol = errors.New("redis: protocol error")

// read reads one reply.
func (c *Conn) read() (any, error) {
	line, err := c.line()
	if err != nil {
		return nil, err
	}
	if len(line) == 0 {
		return nil, fmt.Errorf("%w: empty line", errProtocol)
	}
	body := line[1:]
	switch line[0] {
	case '+':
		return string(body), nil
	case '-':
		return nil, Error(body)
	case ':':
		n, err := strconv.ParseInt(string(body), 10, 64)
		if err != nil {
			return nil, fmt.Errorf("%w: integer %q", errProtocol, body)
		}
		return n, nil
	case '$':
		n, err := strconv.Atoi(string(body))
		if err != nil || n < -1 || n > maxBulk {
			return nil, fmt.Errorf("%w: bulk length %q", errProtocol, body)
		}
		if n == -1 {
			return nil, nil
		}
		b := make([]byte, n+2)
		if _, err := io.ReadFull(c.r, b); err != nil {
			return nil, err
		}
		if b[n] != '\r' || b[n+1] != '\n' {
			return nil, fmt.Errorf("%w: bulk string not ended by CRLF", errProtocol)
		}
		return string(b[:n]), nil
	case '*':
		n, err := strconv.Atoi(string(body))
		if err != nil || n < -1 || n > maxBulk {
			return nil, fmt.Errorf("%w: array length %q", errProtocol, body)
		}
		if n == -1 {
			return nil, nil
		}
		out := make([]any, n)
		for i := range out {
			v, err := c.read()
			var rerr Error
			if err != nil && !errors.As(err, &rerr) {
				return nil, err
			}
			if err != nil {
				v = rerr // an error inside an array is a value
			}
			out[i] = v
		}
		return out, nil
	}
	return nil, fmt.Errorf("%w: unknown reply type %q", errProtocol, line[0])
}

// line reads one CRLF-terminated line, without the CRLF. The slice is valid
// until the next read.
func (c *Conn) line() ([]byte, error) {
	b, err := c.r.ReadSlice('\n')
	if err != nil {
		if errors.Is(err, bufio.ErrBufferFull) {
			return nil, fmt.Errorf("%w: line too long", errProtocol)
		}
		return nil, err
	}
	if len(b) < 2 || b[len(b)-2] != '\r' {
		return nil, fmt.Errorf("%w: line not ended by CRLF", errProtocol)
	}
	return b[:len(b)-2], nil
}
