//go:build linux

package e2e

import (
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/leasehold/leasehold/internal/proc"
)

// TestReadyzFailsOnAFullDisk puts one node's data directory on a small
// tmpfs, fills it, and watches /readyz fail there (and only there) and come
// back once space is freed.
func TestReadyzFailsOnAFullDisk(t *testing.T) {
	mnt := filepath.Join(t.TempDir(), "disk")
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	// Room for the Raft log's first segment, which raft-wal preallocates
	// (64 MiB): on 16 MiB the node could not start at all.
	if err := syscall.Mount("tmpfs", mnt, "tmpfs", 0, "size=160m"); err != nil {
		t.Skipf("cannot mount a tmpfs here (%v; it needs root or CAP_SYS_ADMIN): "+
			"cluster.TestReadinessFollowsTheDisk covers the disk check with a fault hook instead", err)
	}
	t.Cleanup(func() { // registered before the cluster's, so it runs after the nodes are killed
		if err := syscall.Unmount(mnt, syscall.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", mnt, err)
		}
	})
	c := &procCluster{Cluster: startSpecs(t, proc.Layout{Nodes: 3, Dir: t.TempDir(), LogLevel: "debug", HTTP: true},
		func(specs []proc.NodeSpec) { specs[1].Data = filepath.Join(mnt, specs[1].ID) }), t: t}
	c.waitHealthy(30 * time.Second)
	n2 := c.Node("n2")
	probe, scheme := probeClient(t, c.Cluster)
	readyz := func(n *proc.Node) (int, string) {
		code, body, err := httpGet(probe, scheme+"://"+n.HTTPAddr()+"/readyz")
		if err != nil {
			t.Fatalf("%s /readyz: %v", n.ID(), err)
		}
		return code, body
	}
	waitReadyz := func(n *proc.Node, want int) string {
		var code int
		var body string
		if !poll(45*time.Second, func() bool { code, body = readyz(n); return code == want }) {
			t.Fatalf("%s /readyz: %d %q; want %d", n.ID(), code, body, want)
		}
		return body
	}
	for _, n := range c.Nodes() {
		waitReadyz(n, http200)
	}

	filler := filepath.Join(mnt, "filler")
	f, err := os.Create(filler)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1<<20)
	for {
		if _, err := f.Write(buf); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("fill the tmpfs: %v", err)
			}
			break
		}
	}
	// The last partial writes: fill to the last block.
	for _, sz := range []int{64 << 10, 4 << 10, 512} {
		for {
			if _, err := f.Write(buf[:sz]); err != nil {
				break
			}
		}
	}
	f.Close()

	// Wait for the disk's reason, not any 503: under load the full disk's
	// node (the leader, often) may step down meanwhile, and /readyz then
	// says "no leader is known" until the next election, which may come
	// before the next disk check.
	var code int
	var body string
	if !poll(45*time.Second, func() bool {
		code, body = readyz(n2)
		return code == http.StatusServiceUnavailable && strings.Contains(body, "no space left on device")
	}) {
		t.Fatalf("n2 /readyz: %d %q; want 503 with the disk error", code, body)
	}
	mfs := scrape(t, c.Cluster, n2)
	if v, _ := sample(mfs, "leasehold_disk_errors_total", map[string]string{"op": "probe"}); v < 1 {
		t.Errorf("n2 leasehold_disk_errors_total{op=probe} = %v", v)
	}
	if v, _ := sample(mfs, "leasehold_disk_ok", nil); v != 0 {
		t.Errorf("n2 leasehold_disk_ok = %v; want 0", v)
	}
	for _, id := range []string{"n1", "n3"} {
		if code, body := readyz(c.Node(id)); code != http200 {
			t.Errorf("%s, whose disk is fine, /readyz: %d %q", id, code, body)
		}
	}
	if code, _, _ := httpGet(probe, scheme+"://"+n2.HTTPAddr()+"/healthz"); code != http200 {
		t.Errorf("n2 /healthz = %d; the process still serves", code)
	}

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	waitReadyz(n2, http200)
}
