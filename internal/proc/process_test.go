//go:build unix

package proc_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/leasehold/leasehold/internal/proc"
)

// newChild returns a process running the test binary in child mode.
func newChild(t *testing.T, mode string, opts proc.Options) *proc.Process {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	opts.Env = append(opts.Env, "LEASEHOLD_PROC_TEST_CHILD="+mode)
	if opts.Log == "" {
		opts.Log = filepath.Join(t.TempDir(), mode+".log")
	}
	p := proc.New(mode, self, nil, opts)
	t.Cleanup(func() {
		if err := p.Kill(); err != nil {
			t.Error(err)
		}
	})
	return p
}

// wait waits for p's current run to exit, at most 10s, and returns its error.
func wait(t *testing.T, p *proc.Process) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := p.Wait(ctx)
	if errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("%s still running after 10s", p.Name())
	}
	return err
}

// lines collects a process's stdout lines; it is safe for concurrent use.
type lines struct {
	mu  sync.Mutex
	got []string
	ch  chan string
}

func newLines() *lines { return &lines{ch: make(chan string, 100)} }

func (l *lines) add(s string) {
	l.mu.Lock()
	l.got = append(l.got, s)
	l.mu.Unlock()
	l.ch <- s
}

func (l *lines) all() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.got)
}

// next returns the next line, failing t after 10s.
func (l *lines) next(t *testing.T) string {
	t.Helper()
	select {
	case s := <-l.ch:
		return s
	case <-time.After(10 * time.Second):
		t.Fatal("no line from the child within 10s")
		return ""
	}
}

func TestProcessStdoutEnvAndLog(t *testing.T) {
	out := newLines()
	p := newChild(t, "lines", proc.Options{Env: []string{"PROC_TEST_X=from-env"}, Stdout: out.add, MayFinish: true})
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	pid := p.PID()
	if err := wait(t, p); err != nil {
		t.Fatalf("exit: %v", err)
	}
	// The exit is reported after the last line.
	if diff := cmp.Diff([]string{"one", "two", "from-env", "tail"}, out.all()); diff != "" {
		t.Errorf("stdout lines (-want +got):\n%s", diff)
	}
	if e, ok := p.LastExit(); !ok || !e.Expected || e.Err != nil || e.PID != pid {
		t.Errorf("LastExit = %+v, %v; want an expected exit with status 0 of pid %d", e, ok, pid)
	}
	if u := p.UnexpectedExits(); len(u) != 0 {
		t.Errorf("a worker that finished with status 0 counted as unexpected: %v", u)
	}
	log, err := os.ReadFile(p.LogPath())
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{fmt.Sprintf("--- started lines pid %d:", pid), "to stderr\n", fmt.Sprintf("lines (pid %d) exited: status 0", pid)} {
		if !strings.Contains(string(log), want) {
			t.Errorf("log lacks %q:\n%s", want, log)
		}
	}
	if strings.Contains(string(log), "from-env") {
		t.Errorf("stdout went to the log as well as to Stdout:\n%s", log)
	}
}

func TestProcessExitOnItsOwnIsUnexpected(t *testing.T) {
	exited := make(chan proc.Exit, 1)
	p := newChild(t, "exit3", proc.Options{MayFinish: true, OnExit: func(e proc.Exit) { exited <- e }})
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	err := wait(t, p)
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 3 {
		t.Fatalf("Wait = %v, want exit status 3", err)
	}
	e := <-exited
	if e.Expected || e.Name != "exit3" || !strings.Contains(e.String(), "exited on its own: exit status 3") {
		t.Errorf("OnExit got %+v (%s), want an unexpected exit with status 3", e, e)
	}
	if u := p.UnexpectedExits(); len(u) != 1 || u[0].PID != e.PID {
		t.Errorf("UnexpectedExits = %v, want the one exit", u)
	}
}

func TestProcessKillPauseResumeStopRestart(t *testing.T) {
	p := newChild(t, "block", proc.Options{})
	if err := p.Resume(); err != nil || p.Paused() || p.Running() {
		t.Fatalf("before start: Resume = %v, paused %v, running %v; want a no-op", err, p.Paused(), p.Running())
	}
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	if err := p.Start(); err == nil || !strings.Contains(err.Error(), "already running") {
		t.Errorf("second Start = %v, want already running", err)
	}
	pid := p.PID()
	if err := p.Pause(); err != nil {
		t.Fatal(err)
	}
	if !p.Paused() || !p.Running() {
		t.Errorf("after Pause: paused %v, running %v", p.Paused(), p.Running())
	}
	waitState(t, pid, 'T')
	if err := p.Resume(); err != nil {
		t.Fatal(err)
	}
	if p.Paused() {
		t.Error("paused after Resume")
	}
	waitState(t, pid, 'S')

	if err := p.Pause(); err != nil { // killed while paused
		t.Fatal(err)
	}
	if err := p.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := wait(t, p); err == nil || !strings.Contains(err.Error(), "killed") {
		t.Errorf("Wait after Kill = %v, want killed", err)
	}
	if p.Running() || p.Paused() {
		t.Errorf("after Kill: running %v, paused %v", p.Running(), p.Paused())
	}

	if err := p.Start(); err != nil { // again
		t.Fatal(err)
	}
	if p.PID() == pid {
		t.Errorf("restarted with the same pid %d", pid)
	}
	if err := p.Restart(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	if err := p.Stop(5 * time.Second); err != nil {
		t.Errorf("Stop of a process that exits on SIGTERM: %v", err)
	}
	if e, ok := p.LastExit(); !ok || !e.Expected || !strings.Contains(fmt.Sprint(e.Err), "terminated") {
		t.Errorf("LastExit after Stop = %+v, want an expected exit by SIGTERM", e)
	}
	if u := p.UnexpectedExits(); len(u) != 0 {
		t.Errorf("exits the runner caused counted as unexpected: %v", u)
	}
	if err := p.Stop(time.Second); err != nil {
		t.Errorf("Stop of a stopped process = %v, want nil", err)
	}
}

func TestProcessStopKillsAfterGrace(t *testing.T) {
	out := newLines()
	p := newChild(t, "ignore-term", proc.Options{Stdout: out.add})
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	if l := out.next(t); l != "ready" {
		t.Fatalf("child said %q", l)
	}
	start := time.Now()
	err := p.Stop(200 * time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "did not stop within 200ms") {
		t.Errorf("Stop = %v, want did not stop", err)
	}
	if p.Running() {
		t.Error("still running after Stop")
	}
	if d := time.Since(start); d < 200*time.Millisecond {
		t.Errorf("killed after %v, before the grace", d)
	}
	if e, ok := p.LastExit(); !ok || !e.Expected || !strings.Contains(fmt.Sprint(e.Err), "killed") {
		t.Errorf("LastExit = %+v, want an expected exit by SIGKILL", e)
	}
}

// A child is in its own process group, and dies with the runner that
// started it: kill -9 of a runner leaves no grandchild behind.
func TestChildDiesWithItsRunner(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("Pdeathsig is Linux only")
	}
	out := newLines()
	runner := newChild(t, "runner", proc.Options{Stdout: out.add})
	if err := runner.Start(); err != nil {
		t.Fatal(err)
	}
	var grandchild int
	if _, err := fmt.Sscanf(out.next(t), "child %d", &grandchild); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Kill(grandchild, syscall.SIGKILL) }) // only if the test failed
	for _, pid := range []int{runner.PID(), grandchild} {
		if pgid, err := syscall.Getpgid(pid); err != nil || pgid != pid {
			t.Errorf("pid %d in process group %d (%v), want its own", pid, pgid, err)
		}
	}
	if err := runner.Kill(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for alive(grandchild) {
		if time.Now().After(deadline) {
			t.Fatalf("grandchild %d still alive 10s after its runner was killed", grandchild)
		}
		time.Sleep(10 * time.Millisecond) // polling a condition, bounded by the deadline
	}
}

// alive reports whether pid runs and is not a zombie (Linux).
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	return state(b) != 'Z'
}

// state returns the state letter of a /proc/<pid>/stat line.
func state(stat []byte) byte {
	s := string(stat)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		return s[i+2]
	}
	return 0
}

// waitState waits until pid is in state (S sleeping, T stopped), at most
// 10s; it checks nothing off Linux.
func waitState(t *testing.T, pid int, want byte) {
	t.Helper()
	if runtime.GOOS != "linux" {
		return
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			t.Fatal(err)
		}
		got := state(b)
		if got == want || (want == 'S' && got == 'R') {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pid %d in state %c, want %c", pid, got, want)
		}
		time.Sleep(10 * time.Millisecond) // polling a condition, bounded by the deadline
	}
}
