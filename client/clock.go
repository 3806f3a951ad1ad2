//go:build !chaosclock

package client

import "time"

// now reads the client's monotonic clock: nanoseconds since Dial. Every
// lease deadline is on this clock; a wall-clock jump changes nothing.
func (c *Client) now() int64 { return int64(time.Since(c.epoch)) }
