package client

import (
	"context"
	"errors"
	"io"
	"sync"
	"time"

	"google.golang.org/grpc"

	"github.com/leasehold/leasehold/transport"
	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

// streamAPI is an endpoint's LeaseholdClient whose Acquire goes over one
// AcquireStream shared by every call to that endpoint, each request tagged
// by an id and answered under it, instead of one unary call each. The other
// methods are unary. A server without AcquireStream (UNIMPLEMENTED) is
// asked by unary calls from then on. At most transport.MaxStreamInFlight
// requests wait for answers at once, as many as the server works on, so
// that it reads every one at once and a Send never waits for gRPC's flow
// control. It is safe for concurrent use.
type streamAPI struct {
	pb.LeaseholdClient
	ctx   context.Context // the streams' life: canceled when the Client closes
	wg    *sync.WaitGroup // the receivers
	slots chan struct{}   // one per request sent and not answered
	send  sync.Mutex      // gRPC's Send is not safe for concurrent use
	mu    struct {
		sync.Mutex
		st   *openStream // nil: none open
		off  bool        // the server has no AcquireStream: unary
		next uint64
		// pending holds each request sent on the open stream and not
		// answered, also once its caller stopped waiting: it keeps its
		// slot until the server answers it or the stream ends.
		pending map[uint64]chan streamAnswer
	}
}

// openStream is one AcquireStream and whether any answer came back on it.
type openStream struct {
	grpc.BidiStreamingClient[pb.AcquireStreamRequest, pb.AcquireStreamResponse]
	answered bool
}

type streamAnswer struct {
	resp *pb.AcquireResponse
	err  error // a status error, the answer's or the stream's
	// unimplemented: the stream ended UNIMPLEMENTED before any answer.
	unimplemented bool
}

func newStreamAPI(ctx context.Context, wg *sync.WaitGroup, api pb.LeaseholdClient) *streamAPI {
	s := &streamAPI{LeaseholdClient: api, ctx: ctx, wg: wg, slots: make(chan struct{}, transport.MaxStreamInFlight)}
	s.mu.pending = make(map[uint64]chan streamAnswer)
	return s
}

// Acquire sends req on the endpoint's stream (opening one if none is open)
// and waits for its answer or the end of ctx. An error is what the unary
// Acquire would have returned: the answer's status, the broken stream's
// (UNAVAILABLE and the like: an unknown outcome, retried with the same
// seq), or ctx's (DEADLINE_EXCEEDED, CANCELED).
func (s *streamAPI) Acquire(ctx context.Context, req *pb.AcquireRequest, opts ...grpc.CallOption) (*pb.AcquireResponse, error) {
	if s.unary() {
		return s.LeaseholdClient.Acquire(ctx, req, opts...)
	}
	select {
	case s.slots <- struct{}{}:
	case <-ctx.Done():
		return nil, transport.ContextStatus(ctx.Err())
	}
	st, id, ch, err := s.register(ctx)
	if err != nil {
		<-s.slots
		return nil, err
	}
	m := &pb.AcquireStreamRequest{Id: id, Request: req}
	if d, ok := ctx.Deadline(); ok {
		m.TimeoutNs = max(int64(time.Until(d)), 1)
	}
	s.send.Lock()
	err = st.Send(m)
	s.send.Unlock()
	if err != nil && !errors.Is(err, io.EOF) {
		// Not sent (io.EOF: the stream broke, and receive answers it).
		s.mu.Lock()
		if _, ok := s.mu.pending[id]; ok {
			delete(s.mu.pending, id)
			<-s.slots
		}
		s.mu.Unlock()
		return nil, err
	}
	select {
	case a := <-ch:
		if a.unimplemented {
			return s.LeaseholdClient.Acquire(ctx, req, opts...)
		}
		return a.resp, a.err
	case <-ctx.Done():
		return nil, transport.ContextStatus(ctx.Err())
	}
}

func (s *streamAPI) unary() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mu.off
}

// register gives a request an id on the open stream, opening one if none
// is, and returns the channel its answer comes on. Opening waits for the
// connection at most until ctx, the request's, ends: the stream itself
// lives until the Client closes or it breaks.
func (s *streamAPI) register(ctx context.Context) (*openStream, uint64, chan streamAnswer, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.mu.st
	if st == nil {
		sctx, cancel := context.WithCancel(s.ctx)
		stop := context.AfterFunc(ctx, cancel)
		c, err := s.LeaseholdClient.AcquireStream(sctx)
		if !stop() {
			// ctx ended while the stream opened, and canceled it.
			cancel()
			return nil, 0, nil, transport.ContextStatus(ctx.Err())
		}
		if err != nil {
			cancel()
			return nil, 0, nil, err
		}
		st = &openStream{BidiStreamingClient: c}
		s.mu.st = st
		s.wg.Add(1)
		go s.receive(st, cancel)
	}
	s.mu.next++
	ch := make(chan streamAnswer, 1)
	s.mu.pending[s.mu.next] = ch
	return st, s.mu.next, ch, nil
}

// receive hands each answer on st to the request of its id until st ends,
// then answers every request still pending with the stream's error, so
// that each is retried as an unknown outcome (or by unary calls if the
// server has no AcquireStream), and lets the next Acquire open a new
// stream.
func (s *streamAPI) receive(st *openStream, cancel context.CancelFunc) {
	defer s.wg.Done()
	defer cancel()
	for {
		m, err := st.Recv()
		if err != nil {
			s.mu.Lock()
			defer s.mu.Unlock()
			a := streamAnswer{err: err}
			if transport.Unimplemented(err) && !st.answered {
				s.mu.off = true
				a = streamAnswer{unimplemented: true}
			}
			if s.mu.st == st {
				s.mu.st = nil
			}
			for id, ch := range s.mu.pending {
				ch <- a
				delete(s.mu.pending, id)
				<-s.slots
			}
			return
		}
		s.mu.Lock()
		st.answered = true
		ch, ok := s.mu.pending[m.GetId()]
		if ok {
			delete(s.mu.pending, m.GetId())
			<-s.slots
		}
		s.mu.Unlock()
		if !ok {
			continue // not an id of ours: ignored
		}
		resp, err := transport.StreamAnswer(m)
		ch <- streamAnswer{resp: resp, err: err}
	}
}
