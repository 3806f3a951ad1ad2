package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/leasehold/leasehold/internal/proc"
)

// freeBasePort returns a base port whose client and Raft ports for n nodes
// (base+i, base+100+i) were all free a moment ago on 127.0.0.1.
func freeBasePort(t *testing.T, n int) int {
	t.Helper()
	for range 100 {
		base := 20000 + rand.IntN(40000)
		free := true
		for i := 1; i <= n && free; i++ {
			for _, port := range []int{base + i, base + 100 + i, base + 200 + i} {
				l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
				if err != nil {
					free = false
					break
				}
				l.Close()
			}
		}
		if free {
			return base
		}
	}
	t.Fatal("no free base port in 100 tries")
	return 0
}

// waitLog waits until the file at path matches re, at most limit, and
// returns the submatches of the last match.
func waitLog(t *testing.T, path string, re *regexp.Regexp, limit time.Duration) []string {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		b, _ := os.ReadFile(path)
		if m := re.FindAllStringSubmatch(string(b), -1); m != nil {
			return m[len(m)-1]
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %q in %s within %v:\n%s", re, path, limit, b)
		}
		time.Sleep(20 * time.Millisecond) // polling a file, bounded by the deadline
	}
}

// gone reports whether no process has pid (a zombie counts as gone).
func gone(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && i+2 < len(s) && s[i+2] == 'Z'
}

// TestClusterKeepsRunningWhenANodeDies runs `leasehold cluster` as a real
// process: kill -9 of one node's PID is reported and the other two keep a
// leader; SIGUSR1 restarts the dead node; Ctrl-C (SIGINT) stops every node.
func TestClusterKeepsRunningWhenANodeDies(t *testing.T) {
	if testing.Short() {
		t.Skip("builds leasehold and runs a cluster")
	}
	if runtime.GOOS != "linux" {
		t.Skip("reads /proc")
	}
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	bin := filepath.Join(dir, "leasehold")
	if err := proc.Build(ctx, bin, proc.LeaseholdPackage); err != nil {
		t.Fatal(err)
	}
	base := freeBasePort(t, 3)
	endpoints := make(chan string, 1)
	urls := make(chan string, 2) // the metrics: and console: lines, in order
	log := filepath.Join(dir, "cluster.log")
	p := proc.New("leasehold cluster", bin, []string{"cluster", "--nodes", "3", "--dir", filepath.Join(dir, "data"),
		"--base-port", strconv.Itoa(base), "--log-level", "warn"}, proc.Options{Log: log, Stdout: func(line string) {
		if s, ok := strings.CutPrefix(line, "endpoints: "); ok {
			endpoints <- s
		}
		if strings.HasPrefix(line, "metrics: ") || strings.HasPrefix(line, "console: ") {
			urls <- line
		}
	}})
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = p.Kill() // the nodes die with it (Pdeathsig)
		if t.Failed() {
			b, _ := os.ReadFile(log)
			t.Logf("--- leasehold cluster's stderr ---\n%s", b)
		}
	})
	var addrs []string
	select {
	case s := <-endpoints:
		addrs = strings.Split(s, ",")
	case <-p.Exited():
		t.Fatal("leasehold cluster exited before printing its endpoints")
	case <-ctx.Done():
		t.Fatal("no endpoints within 2 minutes")
	}
	admin, err := proc.Dial(addrs)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	// The metrics and console URLs follow the endpoints, one line each.
	var metricsLine, consoleLine string
	for _, dst := range []*string{&metricsLine, &consoleLine} {
		select {
		case *dst = <-urls:
		case <-ctx.Done():
			t.Fatal("no metrics: and console: lines")
		}
	}
	wantMetrics := fmt.Sprintf("metrics: http://127.0.0.1:%d/metrics,http://127.0.0.1:%d/metrics,http://127.0.0.1:%d/metrics",
		base+201, base+202, base+203)
	if metricsLine != wantMetrics {
		t.Errorf("got %q; want %q", metricsLine, wantMetrics)
	}
	console, ok := strings.CutPrefix(consoleLine, "console: ")
	if !ok || !strings.HasPrefix(console, "http://127.0.0.1:") {
		t.Errorf("console line %q", consoleLine)
	}
	resp, err := http.Get(console)
	if err != nil {
		t.Fatalf("GET the console: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("GET %s: %s", console, resp.Status)
	}
	pids := map[string]int{}
	for _, id := range []string{"n1", "n2", "n3"} {
		m := waitLog(t, log, regexp.MustCompile(`started `+id+` pid (\d+)`), time.Second)
		pids[id], _ = strconv.Atoi(m[1])
	}

	// kill -9 of n2, leader or not: the other two keep (or elect) one.
	if err := syscall.Kill(pids["n2"], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitLog(t, log, regexp.MustCompile(fmt.Sprintf(`n2 \(pid %d\) exited on its own: signal: killed; see .*n2\.log; `+
		`the other nodes keep running; .kill -USR1 %d. restarts the nodes that are down`, pids["n2"], p.PID())), 10*time.Second)
	wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
	defer wcancel()
	if _, err := admin.WaitLeader(wctx); err != nil {
		t.Fatalf("no leader with n2 dead: %v", err)
	}
	if !p.Running() {
		t.Fatal("leasehold cluster exited when a node died")
	}

	if err := p.Signal(syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	m := waitLog(t, log, regexp.MustCompile(`restarted n2 pid (\d+)`), 10*time.Second)
	pids["n2"], _ = strconv.Atoi(m[1])
	if err := admin.WaitHealthy(wctx); err != nil {
		t.Fatalf("after the restart: %v", err)
	}
	if sts := admin.Status(ctx, time.Second); sts[1].Err != nil || sts[1].Status.GetNodeId() != "n2" {
		t.Fatalf("n2 after the restart: %+v", sts[1])
	}

	if err := p.Signal(os.Interrupt); err != nil { // Ctrl-C
		t.Fatal(err)
	}
	if err := p.Wait(ctx); err != nil {
		t.Fatalf("leasehold cluster after Ctrl-C: %v", err)
	}
	waitLog(t, log, regexp.MustCompile(`stopping the nodes`), time.Second)
	for id, pid := range pids {
		if !gone(pid) {
			t.Errorf("%s (pid %d) still running after leasehold cluster stopped", id, pid)
		}
	}
}
