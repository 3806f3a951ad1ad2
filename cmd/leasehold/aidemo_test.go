package main

import (
	"context"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/leasehold/leasehold/internal/proc"
)

// aiDemoSummary is ai-demo's last line.
var aiDemoSummary = regexp.MustCompile(`^ai-demo: leasehold 429s=(\d+) used=(\d+\.\d+) added-p50=(\S+); ` +
	`per-process 429s=(\d+) used=(\d+\.\d+); none 429s=(\d+) used=(\d+\.\d+)$`)

// A short ai-demo on a real cluster: the provider answers no call made
// through Leasehold with 429, and the last line is the summary. Its numbers
// are not asserted beyond that (a loaded machine moves them), except that
// the calls with no limiter did get 429s: the provider's limit was hit.
func TestAIDemoShort(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a cluster and worker processes")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	bin := filepath.Join(t.TempDir(), "leasehold")
	if err := proc.Build(ctx, bin, proc.LeaseholdPackage); err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(ctx, bin, "ai-demo", "--duration", "3s", "--stop-duration", "3s", "--start-margin", "2s",
		"--workers", "2", "--goroutines", "8", "--dir", t.TempDir())
	out, err := cmd.Output()
	var stderr string
	if ee, ok := err.(*exec.ExitError); ok {
		stderr = string(ee.Stderr)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	last := lines[len(lines)-1]
	t.Logf("ai-demo:\n%s", out)
	m := aiDemoSummary.FindStringSubmatch(last)
	if m == nil {
		t.Fatalf("last line %q is not the summary (err %v)\n%s", last, err, stderr)
	}
	if m[1] != "0" {
		t.Errorf("leasehold 429s = %s, want 0", m[1])
	}
	if _, perr := time.ParseDuration(m[3]); perr != nil {
		t.Errorf("added-p50 %q is not a Go duration: %v", m[3], perr)
	}
	if m[6] == "0" {
		t.Errorf("none 429s = 0: the provider's limit was never hit, so the demo shows nothing")
	}
	if err != nil {
		t.Errorf("ai-demo: %v\n%s", err, stderr)
	}
	if !strings.Contains(string(out), "outside spender:") {
		t.Errorf("no outside-spender line")
	}
}
