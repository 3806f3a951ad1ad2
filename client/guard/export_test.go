package guard

// SetRand replaces g's source of uniform [0, 1) numbers (full jitter, the
// canary's share) for a test.
func SetRand(g *Guard, f func() float64) { g.clock.float64 = f }
