// Package ratelog logs events that can come in floods (refused
// connections, denied calls, shed requests) without letting a flood fill
// the disk: a few lines at once, then one per interval, each saying how
// many were left out since the last.
package ratelog

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// Limiter decides which events of one kind are logged. It is safe for
// concurrent use.
type Limiter struct {
	lim *rate.Limiter
	mu  sync.Mutex
	// suppressed counts the events left out since the last line.
	suppressed uint64
}

// New returns a Limiter that logs up to burst lines at once, then one
// every interval.
func New(interval time.Duration, burst int) *Limiter {
	return &Limiter{lim: rate.NewLimiter(rate.Every(interval), burst)}
}

// Log logs msg with args at level on log, unless too many lines were
// logged lately; then it only counts the event. A line logged after some
// were left out carries "suppressed", their number.
func (l *Limiter) Log(log *slog.Logger, level slog.Level, msg string, args ...any) {
	l.mu.Lock()
	if !l.lim.Allow() {
		l.suppressed++
		l.mu.Unlock()
		return
	}
	n := l.suppressed
	l.suppressed = 0
	l.mu.Unlock()
	if n > 0 {
		args = append(args, "suppressed", n)
	}
	log.Log(context.Background(), level, msg, args...)
}
