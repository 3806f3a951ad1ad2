package proc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"
)

// KillWait bounds how long Kill (and Stop, after its grace) waits for a
// process to exit after SIGKILL: only a process stuck in the kernel takes
// longer.
const KillWait = 10 * time.Second

// stdoutDrain bounds how long a process's exit waits for its stdout to be
// read to the end, when a descendant still holds the pipe open.
const stdoutDrain = 2 * time.Second

// Options says how to run a process beyond its command line. The zero value
// is valid: output discarded, the runner's environment.
type Options struct {
	// Log is the file that receives the process's stderr and, unless Stdout
	// is set, its stdout, appended; "" discards them. The runner adds a
	// line when it starts the process and one when the process exits.
	Log string
	// Env is added to the runner's environment (later entries win).
	Env []string
	// Stdout, if set, is called with each line the process writes to
	// stdout, from one goroutine per run, in order; the process's exit is
	// reported only after the last line has been handled. Lines longer
	// than 64 KiB are dropped.
	Stdout func(line string)
	// MayFinish marks a process that ends by itself (a client worker): an
	// exit with status 0 is not unexpected.
	MayFinish bool
	// BeforeStart, if set, runs before each start; an error stops the
	// start. A clock knob removes its old acknowledgement here.
	BeforeStart func() error
	// OnExit, if set, is called once per run after the process has exited
	// and its exit has been recorded, from the goroutine that waited for
	// it. It must not block for long.
	OnExit func(Exit)
}

// Exit is how one run of a process ended.
type Exit struct {
	Name string
	PID  int
	// Err is the error exec.Cmd.Wait returned: nil for status 0, an
	// *exec.ExitError for a non-zero status or a signal.
	Err error
	// Expected is true when the runner caused the exit (Kill, Stop), or
	// the process may finish (Options.MayFinish) and exited with status 0.
	Expected bool
	Log      string
}

// String reads "n2 (pid 1234) exited on its own: signal: killed; see n2.log".
func (e Exit) String() string {
	how := "exited"
	if !e.Expected {
		how = "exited on its own"
	}
	err := "status 0"
	if e.Err != nil {
		err = e.Err.Error()
	}
	s := fmt.Sprintf("%s (pid %d) %s: %s", e.Name, e.PID, how, err)
	if e.Log != "" {
		s += "; see " + e.Log
	}
	return s
}

// ExitError is the error of a wait cut short because a process exited on
// its own meanwhile.
type ExitError struct {
	Exit Exit
}

func (e *ExitError) Error() string { return e.Exit.String() }

// Process is a child process the runner starts and may kill, stop, pause,
// resume and start again: a `leasehold serve` node, a client worker, a
// redis-server. It signals only the PID of the process it started. Each
// run is in its own process group, so a Ctrl-C at the terminal reaches only
// the runner, which stops its children itself; on Linux a child is also
// killed when the runner dies (Pdeathsig) before it could. It is safe for
// concurrent use.
type Process struct {
	name string
	path string
	args []string
	opts Options

	mu struct {
		sync.Mutex
		run        *run // the current or last run; nil before the first start
		unexpected []Exit
	}
}

// run is one run of a Process. Its fields are guarded by Process.mu,
// except that err is written before exited is closed and read after.
type run struct {
	cmd        *exec.Cmd
	exited     chan struct{} // closed once cmd has been waited for
	err        error
	exit       Exit // set with err
	paused     bool
	expectExit bool // the runner killed or stopped it
}

// New returns a process that runs path with args; it does not start it.
func New(name, path string, args []string, opts Options) *Process {
	return &Process{name: name, path: path, args: append([]string(nil), args...), opts: opts}
}

// Name returns the process's name, as given to New.
func (p *Process) Name() string { return p.name }

// Path and Args return its command line.
func (p *Process) Path() string   { return p.path }
func (p *Process) Args() []string { return append([]string(nil), p.args...) }

// LogPath returns the file its output is appended to ("" if none).
func (p *Process) LogPath() string { return p.opts.Log }

// Start starts the process, or starts it again after it exited. It fails if
// the process is running.
func (p *Process) Start() error { return p.StartWith() }

// StartWith is Start with extra appended to the arguments, for this run
// only: a node of a new cluster that refused to start because its peers
// had already elected a leader starts again with serve's --replace.
func (p *Process) StartWith(extra ...string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.runningLocked() {
		return fmt.Errorf("%s: already running (pid %d)", p.name, p.mu.run.cmd.Process.Pid)
	}
	if p.opts.BeforeStart != nil {
		if err := p.opts.BeforeStart(); err != nil {
			return fmt.Errorf("start %s: %w", p.name, err)
		}
	}
	args := append(append([]string(nil), p.args...), extra...)
	cmd := exec.Command(p.path, args...)
	if len(p.opts.Env) > 0 {
		cmd.Env = append(os.Environ(), p.opts.Env...)
	}
	cmd.SysProcAttr = sysProcAttr()
	if p.opts.Log != "" {
		f, err := os.OpenFile(p.opts.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			return fmt.Errorf("start %s: %w", p.name, err)
		}
		defer f.Close() // the child has its own descriptor
		cmd.Stdout, cmd.Stderr = f, f
	}
	var lines *lineWriter
	if p.opts.Stdout != nil {
		// exec copies the pipe in a goroutine of its own that Wait waits
		// for (at most WaitDelay once the process has exited).
		lines = &lineWriter{f: p.opts.Stdout}
		cmd.Stdout = lines
		cmd.WaitDelay = stdoutDrain
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", p.name, err)
	}
	p.logLine("--- started %s pid %d: %s %s", p.name, cmd.Process.Pid, p.path, strings.Join(args, " "))
	r := &run{cmd: cmd, exited: make(chan struct{})}
	p.mu.run = r
	go p.wait(r, lines)
	return nil
}

// wait waits for run r to end, records how, and closes r.exited.
func (p *Process) wait(r *run, lines *lineWriter) {
	err := r.cmd.Wait()
	if lines != nil {
		lines.flush()
	}
	p.mu.Lock()
	e := Exit{Name: p.name, PID: r.cmd.Process.Pid, Err: err, Log: p.opts.Log,
		Expected: r.expectExit || (p.opts.MayFinish && err == nil)}
	r.err, r.exit = err, e
	if !e.Expected {
		p.mu.unexpected = append(p.mu.unexpected, e)
	}
	r.paused = false
	p.mu.Unlock()
	inLog := e
	inLog.Log = "" // the line is in that log
	p.logLine("--- %s", inLog)
	close(r.exited)
	if p.opts.OnExit != nil {
		p.opts.OnExit(e)
	}
}

// logLine appends a line of the runner's own to the process's log.
func (p *Process) logLine(format string, args ...any) {
	if p.opts.Log == "" {
		return
	}
	f, err := os.OpenFile(p.opts.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return // the log is for people; the process runs without it
	}
	fmt.Fprintf(f, format+"\n", args...)
	f.Close()
}

func (p *Process) runningLocked() bool {
	if p.mu.run == nil {
		return false
	}
	select {
	case <-p.mu.run.exited:
		return false
	default:
		return true
	}
}

// PID returns the process id of the current or last run, 0 if never started.
func (p *Process) PID() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.mu.run == nil {
		return 0
	}
	return p.mu.run.cmd.Process.Pid
}

// Running reports whether the process has been started and has not exited.
// A paused process is running.
func (p *Process) Running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.runningLocked()
}

// Paused reports whether the process was paused and not resumed since.
func (p *Process) Paused() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.runningLocked() && p.mu.run.paused
}

// Exited returns a channel closed when the current run has exited: nil if
// the process was never started.
func (p *Process) Exited() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.mu.run == nil {
		return nil
	}
	return p.mu.run.exited
}

// LastExit returns how the last run ended; ok is false if the process was
// never started or is running.
func (p *Process) LastExit() (e Exit, ok bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.mu.run == nil || p.runningLocked() {
		return Exit{}, false
	}
	return p.mu.run.exit, true
}

// UnexpectedExits returns every exit so far that the runner did not cause.
func (p *Process) UnexpectedExits() []Exit {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]Exit(nil), p.mu.unexpected...)
}

// Signal sends sig to the running process; it is a no-op if the process is
// not running. The exit it may cause counts as unexpected: use Kill or Stop
// to end a process.
func (p *Process) Signal(sig os.Signal) error {
	_, err := p.signal(sig, false)
	return err
}

// signal sends sig if the process is running; expectExit marks the exit it
// may cause as the runner's doing. It returns the channel closed when the
// run has exited, nil if it was not running.
func (p *Process) signal(sig os.Signal, expectExit bool) (<-chan struct{}, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.runningLocked() {
		return nil, nil
	}
	r := p.mu.run
	if expectExit {
		r.expectExit = true
	}
	switch sig {
	case sigStop:
		r.paused = true
	case sigCont:
		r.paused = false
	}
	if err := r.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return r.exited, fmt.Errorf("signal %v to %s (pid %d): %w", sig, p.name, r.cmd.Process.Pid, err)
	}
	return r.exited, nil
}

// Pause stops the process with SIGSTOP; Resume continues it with SIGCONT.
// Both are no-ops if it is not running; on Windows they fail.
func (p *Process) Pause() error {
	if sigStop == nil {
		return fmt.Errorf("pause %s: %w", p.name, errors.ErrUnsupported)
	}
	return p.Signal(sigStop)
}

func (p *Process) Resume() error {
	if sigCont == nil {
		return fmt.Errorf("resume %s: %w", p.name, errors.ErrUnsupported)
	}
	return p.Signal(sigCont)
}

// Kill sends SIGKILL and waits, at most KillWait, until the process has
// exited. It is a no-op if the process is not running.
func (p *Process) Kill() error {
	exited, err := p.signal(os.Kill, true)
	if err != nil || exited == nil {
		return err
	}
	t := time.NewTimer(KillWait)
	defer t.Stop()
	select {
	case <-exited:
		return nil
	case <-t.C:
		return fmt.Errorf("%s (pid %d) still running %v after SIGKILL", p.name, p.PID(), KillWait)
	}
}

// Stop stops the process gracefully: it resumes it if paused, sends SIGTERM,
// waits up to grace for it to exit, then kills it (Kill). It returns nil if
// the process exited within grace or was not running.
func (p *Process) Stop(grace time.Duration) error {
	if sigCont != nil {
		_ = p.Signal(sigCont)
	}
	exited, err := p.signal(sigTerm, true)
	if exited == nil {
		return nil
	}
	if err == nil {
		t := time.NewTimer(grace)
		defer t.Stop()
		select {
		case <-exited:
			return nil
		case <-t.C:
			err = fmt.Errorf("%s (pid %d) did not stop within %v of SIGTERM; killed", p.name, p.PID(), grace)
		}
	}
	return errors.Join(err, p.Kill())
}

// Restart stops the process (Stop with grace) if it is running, then starts
// it again.
func (p *Process) Restart(grace time.Duration) error {
	stopErr := p.Stop(grace)
	if err := p.Start(); err != nil {
		return errors.Join(stopErr, err)
	}
	return nil
}

// Wait waits until the current run exits or ctx ends, and returns the run's
// exit error (nil for status 0) or ctx's error.
func (p *Process) Wait(ctx context.Context) error {
	p.mu.Lock()
	r := p.mu.run
	p.mu.Unlock()
	if r == nil {
		return fmt.Errorf("%s: not started", p.name)
	}
	select {
	case <-r.exited:
		return r.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// lineWriter calls f with each complete line written to it, without the
// newline; a line longer than maxLine is dropped whole. exec.Cmd writes to
// it from one goroutine.
type lineWriter struct {
	f    func(string)
	buf  []byte
	skip bool // dropping the rest of a line that grew past maxLine
}

// maxLine is the longest line a lineWriter hands over.
const maxLine = 64 << 10

func (w *lineWriter) Write(b []byte) (int, error) {
	n := len(b)
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			if !w.skip {
				w.buf = append(w.buf, b...)
				if len(w.buf) > maxLine {
					w.buf, w.skip = w.buf[:0], true
				}
			}
			break
		}
		if !w.skip && len(w.buf)+i <= maxLine {
			w.f(string(append(w.buf, b[:i]...)))
		}
		w.buf, w.skip = w.buf[:0], false
		b = b[i+1:]
	}
	return n, nil
}

// flush hands over a last line that has no newline.
func (w *lineWriter) flush() {
	if !w.skip && len(w.buf) > 0 {
		w.f(string(w.buf))
	}
	w.buf, w.skip = w.buf[:0], false
}
