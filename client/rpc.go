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
// decision), retrying unknown outcomes with the same seq. sent is when the
// request was first sent, on the Client's clock: a lease's life counts from
// then.
func (c *Client) acquireItems(ctx context.Context, items []*pb.AcquireItem, ttl time.Duration) (resp *pb.AcquireResponse, sent int64, err error) {
	seq := c.seqs.begin()
	defer c.seqs.end(seq)
	req := &pb.AcquireRequest{ClientId: c.id, Seq: seq, Items: items, TtlNs: int64(ttl)}
	sent = c.now()
	if err := transport.ValidateAcquire(req); err != nil {
		return nil, sent, fmt.Errorf("leasehold: acquire not sent: %w", err)
	}
	acquiring.Add(1)
	err = c.eps.call(ctx, c.cfg.requestTimeout, func(ctx context.Context, api pb.LeaseholdClient) error {
		req.AckedBelow = c.seqs.low()
		r, err := api.Acquire(ctx, req)
		resp = r
		return err
	})
	acquiring.Add(-1)
	if err == nil && resp.GetAllowed() && len(resp.GetItems()) != len(items) {
		err = fmt.Errorf("leasehold: malformed acquire reply: %d items for %d", len(resp.GetItems()), len(items))
	}
	return resp, sent, err
}

// sendRelease sends req (its seq set by the caller), retrying like acquire.
func (c *Client) sendRelease(ctx context.Context, req *pb.ReleaseRequest) (*pb.ReleaseResponse, error) {
	if err := transport.ValidateRelease(req); err != nil {
		return nil, fmt.Errorf("leasehold: release not sent: %w", err)
	}
	var resp *pb.ReleaseResponse
	err := c.eps.call(ctx, c.cfg.requestTimeout, func(ctx context.Context, api pb.LeaseholdClient) error {
		req.AckedBelow = c.seqs.low()
		r, err := api.Release(ctx, req)
		resp = r
		return err
	})
	return resp, err
}

// sendCharge sends req (its seq set by the caller), retrying like acquire:
// a retry with the same seq is charged once.
func (c *Client) sendCharge(ctx context.Context, req *pb.ChargeRequest) (*pb.ChargeResponse, error) {
	if err := transport.ValidateCharge(req); err != nil {
		return nil, fmt.Errorf("leasehold: charge not sent: %w", err)
	}
	var resp *pb.ChargeResponse
	err := c.eps.call(ctx, c.cfg.requestTimeout, func(ctx context.Context, api pb.LeaseholdClient) error {
		req.AckedBelow = c.seqs.low()
		r, err := api.Charge(ctx, req)
		resp = r
		return err
	})
	if err == nil && len(resp.GetItems()) != len(req.GetItems()) {
		err = fmt.Errorf("leasehold: malformed charge reply: %d items for %d", len(resp.GetItems()), len(req.GetItems()))
	}
	return resp, err
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
	err = c.eps.call(ctx, c.cfg.requestTimeout, func(ctx context.Context, api pb.LeaseholdClient) error {
		req.AckedBelow = c.seqs.low()
		r, err := api.Extend(ctx, req)
		resp = r
		return err
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
	var resp *pb.RestrictResponse
	err := c.eps.call(ctx, c.cfg.requestTimeout, func(ctx context.Context, api pb.LeaseholdClient) error {
		req.AckedBelow = c.seqs.low()
		r, err := api.Restrict(ctx, req)
		resp = r
		return err
	})
	return resp, err
}
