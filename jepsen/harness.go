package jepsen

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/leasehold/leasehold/internal/chaosclock"
	"github.com/leasehold/leasehold/internal/loopback"

	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

// proc is a child process the harness starts, and may kill, restart, pause
// and resume: a node or a client worker. The harness signals only the PIDs
// of the procs it started. It is safe for concurrent use.
type proc struct {
	name    string // n1.., c1..
	path    string
	args    []string
	logPath string // stdout (unless stdout is set) and stderr, appended
	// stdout, if set, receives the process's stdout (a worker's progress).
	stdout func(line string)
	// mayFinish: the process ends by itself (a worker), so an exit with
	// status 0 is not a crash.
	mayFinish bool
	// env is added to the runner's environment (the clock knob's file).
	env []string
	// clockFile is the process's clock knob control file (chaosclock).
	clockFile string

	mu struct {
		sync.Mutex
		cmd        *exec.Cmd
		exited     chan struct{} // closed when cmd has been waited for
		waitErr    error
		paused     bool
		expectExit bool // the harness killed or stopped it
		unexpected []string
	}
}

// start starts p (again). Children run in their own process group, so a
// Ctrl-C at the terminal reaches only the runner, which stops them itself,
// and they are killed if the runner dies (Pdeathsig) before it can.
func (p *proc) start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.mu.cmd != nil {
		select {
		case <-p.mu.exited:
		default:
			return fmt.Errorf("%s: already running (pid %d)", p.name, p.mu.cmd.Process.Pid)
		}
	}
	logFile, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logFile.Close() // the child has its own descriptor
	if p.clockFile != "" {
		// The new process acknowledges the control file once its clock
		// knob listens; an old ack would promise that too early.
		if err := os.Remove(chaosclock.AckPath(p.clockFile)); err != nil && !os.IsNotExist(err) {
			return err
		}
	}
	cmd := exec.Command(p.path, p.args...)
	if len(p.env) > 0 {
		cmd.Env = append(os.Environ(), p.env...)
	}
	cmd.Stderr = logFile
	cmd.Stdout = logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	var outR, outW *os.File
	if p.stdout != nil {
		if outR, outW, err = os.Pipe(); err != nil {
			return err
		}
		cmd.Stdout = outW
	}
	if err := cmd.Start(); err != nil {
		if outR != nil {
			outR.Close()
			outW.Close()
		}
		return fmt.Errorf("start %s: %w", p.name, err)
	}
	fmt.Fprintf(logFile, "--- jepsen: started %s pid %d: %s %s\n", p.name, cmd.Process.Pid, p.path, strings.Join(p.args, " "))
	exited := make(chan struct{})
	p.mu.cmd, p.mu.exited, p.mu.waitErr, p.mu.paused, p.mu.expectExit = cmd, exited, nil, false, false
	if outR != nil {
		outW.Close()
		go func() { // ends at EOF: when the child and its descendants exit
			defer outR.Close()
			scanLines(outR, p.stdout)
		}()
	}
	go func() {
		err := cmd.Wait()
		p.mu.Lock()
		p.mu.waitErr = err
		if !p.mu.expectExit && !(p.mayFinish && err == nil) {
			p.mu.unexpected = append(p.mu.unexpected, fmt.Sprintf("%s (pid %d) exited on its own: %v", p.name, cmd.Process.Pid, err))
		}
		p.mu.Unlock()
		close(exited)
	}()
	return nil
}

// scanLines calls f with each line read from r until EOF or an error.
func scanLines(r io.Reader, f func(string)) {
	buf := make([]byte, 0, 4096)
	chunk := make([]byte, 4096)
	for {
		n, err := r.Read(chunk)
		buf = append(buf, chunk[:n]...)
		for {
			i := bytes.IndexByte(buf, '\n')
			if i < 0 {
				break
			}
			f(string(buf[:i]))
			buf = buf[i+1:]
		}
		if len(buf) > 1<<16 { // no newline in 64 KiB: not a line protocol
			buf = buf[:0]
		}
		if err != nil {
			return
		}
	}
}

// pid returns the process id of p's current or last process, 0 if never started.
func (p *proc) pid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.mu.cmd == nil {
		return 0
	}
	return p.mu.cmd.Process.Pid
}

// running reports whether p's process has been started and not yet exited.
func (p *proc) running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.mu.cmd == nil {
		return false
	}
	select {
	case <-p.mu.exited:
		return false
	default:
		return true
	}
}

// paused reports whether p was stopped with SIGSTOP and not resumed since.
func (p *proc) paused() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.mu.paused && p.mu.cmd != nil
}

// signal sends sig to p's process if it is running; expectExit marks the
// exit it may cause as the harness's doing. It returns the channel closed
// when the process has exited (nil if it was not running).
func (p *proc) signal(sig syscall.Signal, expectExit bool) (<-chan struct{}, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.mu.cmd == nil {
		return nil, nil
	}
	select {
	case <-p.mu.exited:
		return nil, nil
	default:
	}
	if expectExit {
		p.mu.expectExit = true
	}
	switch sig {
	case syscall.SIGSTOP:
		p.mu.paused = true
	case syscall.SIGCONT:
		p.mu.paused = false
	}
	if err := p.mu.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return p.mu.exited, fmt.Errorf("signal %v to %s (pid %d): %w", sig, p.name, p.mu.cmd.Process.Pid, err)
	}
	return p.mu.exited, nil
}

// kill sends SIGKILL and waits (at most limit) until the process has exited.
func (p *proc) kill(limit time.Duration) error {
	exited, err := p.signal(syscall.SIGKILL, true)
	if err != nil || exited == nil {
		return err
	}
	p.mu.Lock()
	p.mu.paused = false
	p.mu.Unlock()
	select {
	case <-exited:
		return nil
	case <-time.After(limit):
		return fmt.Errorf("%s (pid %d) still running %v after SIGKILL", p.name, p.pid(), limit)
	}
}

// pause sends SIGSTOP; resume sends SIGCONT.
func (p *proc) pause() error {
	_, err := p.signal(syscall.SIGSTOP, false)
	return err
}

func (p *proc) resume() error {
	_, err := p.signal(syscall.SIGCONT, false)
	return err
}

// stop resumes p if paused, sends SIGTERM, waits up to grace for it to exit,
// then kills it. It reports whether p exited within the grace period.
func (p *proc) stop(grace time.Duration) bool {
	_, _ = p.signal(syscall.SIGCONT, false)
	exited, err := p.signal(syscall.SIGTERM, true)
	if exited == nil {
		return true
	}
	if err == nil {
		select {
		case <-exited:
			return true
		case <-time.After(grace):
		}
	}
	_ = p.kill(10 * time.Second)
	return false
}

// wait waits until p's process exits or ctx ends, and returns its exit error.
func (p *proc) wait(ctx context.Context) error {
	p.mu.Lock()
	exited := p.mu.exited
	p.mu.Unlock()
	if exited == nil {
		return errors.New("not started")
	}
	select {
	case <-exited:
	case <-ctx.Done():
		return ctx.Err()
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.mu.waitErr
}

// unexpectedExits lists the times p exited without the harness causing it.
func (p *proc) unexpectedExits() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.mu.unexpected...)
}

// node is one `leasehold serve` process of the cluster under test.
type node struct {
	*proc
	id, grpcAddr, raftAddr, data string
	conn                         *grpc.ClientConn
	api                          pb.LeaseholdClient
}

// cluster is the set of node processes under test, all on loopback. It is
// safe for concurrent use.
type cluster struct {
	nodes []*node
}

// newCluster prepares n nodes (n1..nN) of binary bin with their data and logs
// under dir, on free loopback ports; it starts none of them. Each node
// reaches each peer through its own link of nw (--raft-dial), and reads its
// clock knob's control file <dir>/clock-<id>.
func newCluster(dir, bin string, n int, logLevel string, nw *network) (*cluster, error) {
	ports, err := loopback.FreePorts(2 * n)
	if err != nil {
		return nil, err
	}
	c := &cluster{}
	var peers []string
	for i := range n {
		id := fmt.Sprintf("n%d", i+1)
		nd := &node{
			id:       id,
			grpcAddr: fmt.Sprintf("127.0.0.1:%d", ports[i]),
			raftAddr: fmt.Sprintf("127.0.0.1:%d", ports[n+i]),
			data:     filepath.Join(dir, "data", id),
		}
		nd.conn, err = grpc.NewClient(nd.grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			c.close()
			return nil, err
		}
		nd.api = pb.NewLeaseholdClient(nd.conn)
		if err := os.MkdirAll(nd.data, 0o755); err != nil {
			c.close()
			return nil, err
		}
		c.nodes = append(c.nodes, nd)
		peers = append(peers, id+"="+nd.raftAddr)
	}
	for _, nd := range c.nodes {
		var dial []string
		for _, peer := range c.nodes {
			if peer == nd {
				continue
			}
			l, err := nw.add(nd.id, peer.id, peer.raftAddr)
			if err != nil {
				c.close()
				return nil, err
			}
			dial = append(dial, peer.id+"="+l.addr())
		}
		clock := filepath.Join(dir, "clock-"+nd.id)
		if err := chaosclock.WriteControl(clock, chaosclock.Control{}); err != nil {
			c.close()
			return nil, err
		}
		nd.proc = &proc{
			name:      nd.id,
			path:      bin,
			logPath:   filepath.Join(dir, nd.id+".log"),
			env:       []string{chaosclock.EnvVar + "=" + clock},
			clockFile: clock,
			args: []string{"serve", "--id", nd.id, "--data", nd.data, "--grpc-addr", nd.grpcAddr,
				"--raft-addr", nd.raftAddr, "--peers", strings.Join(peers, ","),
				"--raft-dial", strings.Join(dial, ","), "--log-level", logLevel},
		}
	}
	return c, nil
}

func (c *cluster) endpoints() []string {
	var out []string
	for _, nd := range c.nodes {
		out = append(out, nd.grpcAddr)
	}
	return out
}

func (c *cluster) node(id string) *node {
	for _, nd := range c.nodes {
		if nd.id == id {
			return nd
		}
	}
	return nil
}

// nodeStatus is one node's answer to Status.
type nodeStatus struct {
	id     string
	state  string
	leader string
	term   uint64
	err    error
}

// status asks every node at once, each bounded by timeout.
func (c *cluster) status(ctx context.Context, timeout time.Duration) []nodeStatus {
	out := make([]nodeStatus, len(c.nodes))
	var wg sync.WaitGroup
	for i, nd := range c.nodes {
		wg.Go(func() {
			out[i].id = nd.id
			if !nd.running() || nd.paused() {
				out[i].err = errors.New("not running")
				return
			}
			sctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			st, err := nd.api.Status(sctx, &pb.StatusRequest{})
			if err != nil {
				out[i].err = err
				return
			}
			out[i].state, out[i].leader, out[i].term = st.GetState(), st.GetLeaderId(), st.GetTerm()
		})
	}
	wg.Wait()
	return out
}

// leader returns the id of the node that says it leads in the highest term,
// or "" if none does.
func (c *cluster) leader(ctx context.Context) string {
	sts := c.status(ctx, 500*time.Millisecond)
	sort.Slice(sts, func(i, j int) bool { return sts[i].term > sts[j].term })
	for _, st := range sts {
		if st.err == nil && st.state == "leader" {
			return st.id
		}
	}
	return ""
}

// waitLeader polls until a node leads, at most limit.
func (c *cluster) waitLeader(ctx context.Context, limit time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		if id := c.leader(ctx); id != "" {
			return id, nil
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("no leader within %v", limit)
		case <-tick.C:
		}
	}
}

// stopAll stops every node (SIGCONT, SIGTERM, then SIGKILL after grace), all
// at once, and closes the connections.
func (c *cluster) stopAll(grace time.Duration) {
	var wg sync.WaitGroup
	for _, nd := range c.nodes {
		if nd.proc != nil {
			wg.Go(func() { nd.stop(grace) })
		}
	}
	wg.Wait()
}

func (c *cluster) close() {
	for _, nd := range c.nodes {
		if nd.conn != nil {
			nd.conn.Close()
		}
	}
}
