package bench

import (
	"fmt"
	"io"
	"os"
	"strings"
	"time"
)

// Progress draws a run's progress on w (stderr). On a terminal it redraws
// one line in place with \r, five times a second; anywhere else (a CI log,
// a file) it writes a plain line every 5 seconds, so that logs stay
// readable. It is used by one goroutine at a time.
type Progress struct {
	w        io.Writer
	tty      bool
	name     string
	total    time.Duration
	lastLine time.Duration
	drawn    bool
}

// plainEvery is how often a non-terminal gets a progress line.
const plainEvery = 5 * time.Second

// NewProgress returns a Progress for a run called name lasting total, drawn
// on w; tty says whether w is a terminal (see IsTerminal).
func NewProgress(w io.Writer, tty bool, name string, total time.Duration) *Progress {
	return &Progress{w: w, tty: tty, name: name, total: total}
}

// Every is how often Update should be called.
func (p *Progress) Every() time.Duration {
	if p.tty {
		return 200 * time.Millisecond
	}
	return time.Second
}

// Update shows the decisions and admissions after elapsed.
func (p *Progress) Update(decisions, admitted int64, elapsed time.Duration) {
	rate := 0.0
	if elapsed > 0 {
		rate = float64(decisions) / elapsed.Seconds()
	}
	if !p.tty {
		if elapsed-p.lastLine < plainEvery {
			return
		}
		p.lastLine = elapsed
		fmt.Fprintf(p.w, "%s: %v of %v, %s decisions/s, %d admitted\n", p.name,
			elapsed.Round(time.Second), p.total, Count(rate), admitted)
		return
	}
	const width = 24
	done := 0
	if p.total > 0 {
		done = int(min(int64(width), int64(width)*int64(elapsed)/int64(p.total)))
	}
	bar := strings.Repeat("#", done) + strings.Repeat(".", width-done)
	fmt.Fprintf(p.w, "\r\033[K%-22s [%s] %5.1fs/%v  %s decisions/s  %d admitted", p.name, bar,
		elapsed.Seconds(), p.total, Count(rate), admitted)
	p.drawn = true
}

// Done clears the progress line on a terminal.
func (p *Progress) Done() {
	if p.tty && p.drawn {
		fmt.Fprint(p.w, "\r\033[K")
	}
}

// IsTerminal reports whether f is a character device (a terminal; also
// /dev/null, where drawing does no harm).
func IsTerminal(f *os.File) bool {
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// Count formats n with an SI suffix and three significant digits: 950,
// 12.3k, 4.56M.
func Count(n float64) string {
	units := []string{"", "k", "M", "G", "T"}
	u := 0
	for u < len(units)-1 && max(n, -n) >= 999.5 {
		n /= 1000
		u++
	}
	return fmt.Sprintf("%.3g%s", n, units[u])
}
