//go:build unix

package main

import (
	"context"
	"fmt"
	"path/filepath"
	"regexp"
	"syscall"
	"testing"
	"time"

	"github.com/leasehold/leasehold/internal/loopback"
	"github.com/leasehold/leasehold/internal/proc"
)

// TestServeStopsGracefullyOnSIGHUP: serve died of SIGHUP at once ("exited
// on its own: signal: hangup"), with no hand-over and its stores left
// open, while leasehold cluster stopped its nodes on it. serve treats HUP
// as TERM: it stops gracefully and exits 0.
func TestServeStopsGracefullyOnSIGHUP(t *testing.T) {
	if testing.Short() {
		t.Skip("builds leasehold and runs serve")
	}
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	bin := filepath.Join(dir, "leasehold")
	if err := proc.Build(ctx, bin, proc.LeaseholdPackage); err != nil {
		t.Fatal(err)
	}
	ports, err := loopback.StablePorts(2)
	if err != nil {
		t.Fatal(err)
	}
	raftAddr := fmt.Sprintf("127.0.0.1:%d", ports[1])
	log := filepath.Join(dir, "n1.log")
	p := proc.New("n1", bin, []string{"serve", "--id", "n1", "--data", filepath.Join(dir, "n1"), "--insecure",
		"--grpc-addr", fmt.Sprintf("127.0.0.1:%d", ports[0]), "--raft-addr", raftAddr, "--peers", "n1=" + raftAddr},
		proc.Options{Log: log})
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Kill() })
	waitLog(t, log, regexp.MustCompile(`msg=serving id=n1`), 30*time.Second)
	if err := p.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	if err := p.Wait(ctx); err != nil {
		t.Fatalf("serve after SIGHUP: %v; want a graceful stop, exit status 0", err)
	}
	waitLog(t, log, regexp.MustCompile(`msg=stopped id=n1`), time.Second)
}
