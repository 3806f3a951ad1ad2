package client

import (
	"context"
	"fmt"
	"time"

	"github.com/leasehold/leasehold/transport"
	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

// The calls a Budget makes: an Acquire of several items, and Release,
// Charge, Extend and Restrict requests built once and sent (and resent,
// with the same seq) until they are answered. Each request is checked as
// the cluster will check it before it is sent, so that a request the
// cluster would reject is the caller's error (*transport.InvalidError),
// never "cluster unreachable".

// acquireItems sends one Acquire of items with a lease of ttl (0: a central
// decision, which with a span asks its token buckets to answer the time
// it may be spent in: span_ns and span_buckets), as sendAcquire does.
func (c *Client) acquireItems(ctx context.Context, items []*pb.AcquireItem, ttl, span time.Duration) (resp *pb.AcquireResponse, at sendTimes, err error) {
	seq := c.seqs.begin()
	defer c.seqs.end(seq)
	req := &pb.AcquireRequest{ClientId: c.id, Seq: seq, Items: items, TtlNs: int64(ttl),
		SpanNs: int64(span), SpanBuckets: span > 0}
	return c.sendAcquire(ctx, req, nil)
}

// sendAcquire sends req (its seq taken by the caller), retrying unknown
// outcomes with the same seq (see endpoints.call), and says when its
// attempts were sent. It checks req as the cluster will first: a request
// the cluster would reject, or that gRPC cannot encode, is the caller's
// error (*transport.InvalidError), never "cluster unreachable", and is not
// sent; started, if not nil, is called with the send time once it passed.
//
// A retry's answer the cluster says it decided in the entry that carried
// that attempt (AcquireResponse.decided) was stamped after the attempt was
// sent, so at.since moves to it; an answer remembered from an earlier entry,
// or from a node that does not say, may have been stamped before, and its
// queue time, which describes this attempt and not that entry, is dropped.
// The request is counted in the Client's stats once, with how it ended.
func (c *Client) sendAcquire(ctx context.Context, req *pb.AcquireRequest, started func(sent int64)) (resp *pb.AcquireResponse, at sendTimes, err error) {
	sent := c.now()
	at = sendTimes{first: sent, since: sent, last: sent}
	if err := transport.ValidateAcquire(req); err != nil {
		return nil, at, fmt.Errorf("leasehold: acquire not sent: %w", err)
	}
	if started != nil {
		started(sent)
	}
	acquiring.Add(1)
	attempts := 0
	err = c.eps.call(ctx, c.cfg.requestTimeout, func(ctx context.Context, api pb.LeaseholdClient) error {
		req.AckedBelow = c.seqs.low()
		if attempts++; attempts > 1 {
			at.last = c.now()
		}
		r, err := api.Acquire(ctx, req)
		resp = r
		return err
	})
	acquiring.Add(-1)
	if err == nil && attempts > 1 {
		if resp.GetDecided() {
			at.since = at.last
		} else {
			resp.QueuedNs = 0
		}
	}
	if err == nil && resp.GetAllowed() && len(resp.GetItems()) != len(req.GetItems()) {
		err = fmt.Errorf("leasehold: malformed acquire reply: %d items for %d", len(resp.GetItems()), len(req.GetItems()))
	}
	c.stats.request(callAcquire, err)
	return resp, at, err
}

// sendRelease sends req (its seq set by the caller), retrying like acquire.
func (c *Client) sendRelease(ctx context.Context, req *pb.ReleaseRequest) (*pb.ReleaseResponse, error) {
	if err := transport.ValidateRelease(req); err != nil {
		return nil, fmt.Errorf("leasehold: release not sent: %w", err)
	}
	return send(ctx, c, callRelease, &req.AckedBelow, nil,
		func(ctx context.Context, api pb.LeaseholdClient) (*pb.ReleaseResponse, error) {
			return api.Release(ctx, req)
		})
}

// sendCharge sends req (its seq set by the caller), retrying like acquire:
// a retry with the same seq is charged once.
func (c *Client) sendCharge(ctx context.Context, req *pb.ChargeRequest) (*pb.ChargeResponse, error) {
	if err := transport.ValidateCharge(req); err != nil {
		return nil, fmt.Errorf("leasehold: charge not sent: %w", err)
	}
	return send(ctx, c, callCharge, &req.AckedBelow, func(r *pb.ChargeResponse) error {
		if len(r.GetItems()) != len(req.GetItems()) {
			return fmt.Errorf("leasehold: malformed charge reply: %d items for %d", len(r.GetItems()), len(req.GetItems()))
		}
		return nil
	}, func(ctx context.Context, api pb.LeaseholdClient) (*pb.ChargeResponse, error) {
		return api.Charge(ctx, req)
	})
}

// extend asks the cluster to keep lease id alive for ttl from now. sent is
// when the request was first sent: the new life counts from then.
func (c *Client) extend(ctx context.Context, id uint64, ttl time.Duration) (resp *pb.ExtendResponse, sent int64, err error) {
	seq := c.seqs.begin()
	defer c.seqs.end(seq)
	req := &pb.ExtendRequest{ClientId: c.id, Seq: seq, LeaseId: id, TtlNs: int64(ttl)}
	sent = c.now()
	if err := transport.ValidateExtend(req); err != nil {
		return nil, sent, fmt.Errorf("leasehold: extend not sent: %w", err)
	}
	resp, err = send(ctx, c, callExtend, &req.AckedBelow, nil,
		func(ctx context.Context, api pb.LeaseholdClient) (*pb.ExtendResponse, error) {
			return api.Extend(ctx, req)
		})
	return resp, sent, err
}

// restrict sends one Restrict of items, retrying like acquire.
func (c *Client) restrict(ctx context.Context, items []*pb.RestrictItem) (*pb.RestrictResponse, error) {
	seq := c.seqs.begin()
	defer c.seqs.end(seq)
	req := &pb.RestrictRequest{ClientId: c.id, Seq: seq, Items: items}
	if err := transport.ValidateRestrict(req); err != nil {
		return nil, fmt.Errorf("leasehold: restrict not sent: %w", err)
	}
	return send(ctx, c, callRestrict, &req.AckedBelow, nil,
		func(ctx context.Context, api pb.LeaseholdClient) (*pb.RestrictResponse, error) {
			return api.Restrict(ctx, req)
		})
}

// send makes one request through the endpoints, retrying unknown outcomes
// with the same seq; before each attempt it sets *ackedBelow, the request's
// acked_below, to the lowest seq still in flight. check, if not nil, vets
// an answer (a malformed one is an error). The request is counted in the
// Client's stats once, with how it ended.
func send[Resp any](ctx context.Context, c *Client, k call, ackedBelow *uint64, check func(Resp) error,
	rpc func(context.Context, pb.LeaseholdClient) (Resp, error)) (Resp, error) {
	var resp Resp
	err := c.eps.call(ctx, c.cfg.requestTimeout, func(ctx context.Context, api pb.LeaseholdClient) error {
		*ackedBelow = c.seqs.low()
		r, err := rpc(ctx, api)
		resp = r
		return err
	})
	if err == nil && check != nil {
		err = check(resp)
	}
	c.stats.request(k, err)
	return resp, err
}
