package fsm

import "github.com/leasehold/leasehold/limiter"

// NewWithoutDebtCap returns a Machine whose Charge ignores every limit's
// MaxDebt: a known-bad variant, for the bound test to show that it catches
// a missing cap.
func NewWithoutDebtCap() *Machine {
	m := New()
	m.noDebtCap = true
	return m
}

// Lacking returns how many tokens a token bucket key lacks at log time now
// of its burst: the burst less its level, more than the burst when it owes.
// A key the machine does not hold, or of another algorithm, lacks nothing.
func (m *Machine) Lacking(key string, now int64) int64 {
	i := m.keys.findString(m.entries, key)
	if i < 0 {
		return 0
	}
	e := &m.entries[i]
	c := m.limits.get(e.limit())
	if c.def.Algorithm != TokenBucket {
		return 0
	}
	return c.def.Burst - c.bucket.Level(limiter.BucketState{TAT: e.state}, now)
}
