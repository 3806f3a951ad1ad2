package client

// LockForTest locks l's mutex and returns its unlock, so that a test can
// check that a path takes no lock.
func LockForTest(l *Limiter) (unlock func()) {
	l.mu.Lock()
	return l.mu.Unlock
}

// RefusedForTest returns the tokens AllowN refused without the lock.
func RefusedForTest(l *Limiter) int64 { return l.refusedTotal() }
