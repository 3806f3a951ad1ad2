package fakeprovider

import (
	"context"
	"errors"
	"io"
	"net/http"
	"sync"
)

// Transport returns an http.RoundTripper that serves requests with h in
// memory: each request runs h on its own goroutine, and the response body is
// a pipe that h writes into. Nothing touches a socket, so it runs inside a
// testing/synctest bubble. Closing the response body, or cancelling the
// request's context, cancels the context h sees; a handler that panics with
// http.ErrAbortHandler cuts the body with io.ErrUnexpectedEOF, as a dropped
// connection would.
func Transport(h http.Handler) http.RoundTripper { return memTransport{h} }

type memTransport struct{ h http.Handler }

func (t memTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx, cancel := context.WithCancel(req.Context())
	sreq := req.Clone(ctx)
	if req.Body == nil {
		sreq.Body = http.NoBody
	}
	pr, pw := io.Pipe()
	w := &pipeWriter{header: make(http.Header), pw: pw, ready: make(chan struct{}), req: req}
	go func() {
		defer func() {
			v := recover()
			w.sendHeaders()
			switch {
			case v == nil:
				// A handler that returned because the caller gave up
				// leaves the caller's error, as a real connection would.
				pw.CloseWithError(req.Context().Err())
			case v == http.ErrAbortHandler: //nolint:errorlint // a sentinel panic value, compared as net/http does
				pw.CloseWithError(io.ErrUnexpectedEOF)
			default:
				pw.CloseWithError(errors.New("fakeprovider: handler panicked"))
				panic(v)
			}
		}()
		t.h.ServeHTTP(w, sreq)
	}()
	select {
	case <-w.ready:
	case <-req.Context().Done():
		cancel()
		pr.CloseWithError(req.Context().Err())
		return nil, req.Context().Err()
	}
	body := &pipeBody{pr: pr, cancel: cancel}
	stop := context.AfterFunc(req.Context(), func() { pw.CloseWithError(req.Context().Err()) })
	body.stop = stop
	return w.response(body), nil
}

// pipeWriter is the handler's http.ResponseWriter.
type pipeWriter struct {
	header http.Header
	pw     *io.PipeWriter
	req    *http.Request

	once   sync.Once
	ready  chan struct{}
	status int
	sent   http.Header
}

func (w *pipeWriter) Header() http.Header { return w.header }

func (w *pipeWriter) WriteHeader(code int) {
	w.once.Do(func() {
		w.status = code
		w.sent = w.header.Clone()
		close(w.ready)
	})
}

func (w *pipeWriter) sendHeaders() { w.WriteHeader(http.StatusOK) }

func (w *pipeWriter) Write(b []byte) (int, error) {
	w.sendHeaders()
	return w.pw.Write(b)
}

// Flush is a no-op: every Write reaches the reader at once.
func (w *pipeWriter) Flush() { w.sendHeaders() }

func (w *pipeWriter) response(body io.ReadCloser) *http.Response {
	return &http.Response{
		Status: http.StatusText(w.status), StatusCode: w.status,
		Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: w.sent, Body: body, ContentLength: -1, Request: w.req,
	}
}

// pipeBody is the response body; Close cancels the handler.
type pipeBody struct {
	pr     *io.PipeReader
	cancel context.CancelFunc
	stop   func() bool
}

func (b *pipeBody) Read(p []byte) (int, error) { return b.pr.Read(p) }

func (b *pipeBody) Close() error {
	b.stop()
	b.cancel()
	return b.pr.Close()
}
