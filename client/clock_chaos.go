//go:build chaosclock

package client

import "github.com/leasehold/leasehold/internal/chaosclock"

// now reads the client's monotonic clock, nanoseconds since Dial, through
// the chaos harness's clock knob: only in binaries built with -tags
// chaosclock, so the harness can make this client's clock run fast or slow.
func (c *Client) now() int64 { return int64(chaosclock.Since(c.epoch)) }
