package main

import (
	"bytes"
	"context"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/leasehold/leasehold/internal/buildinfo"
)

func TestPrintVersion(t *testing.T) {
	for _, tc := range []struct {
		info buildinfo.Info
		want string
	}{
		{buildinfo.Info{Version: "dev", GoVersion: "go1.26.8"}, "leasehold dev\nrevision  unknown\ngo        go1.26.8 "},
		{buildinfo.Info{Version: "05d4a62abcde-dirty", Revision: "05d4a62abcdef0123456789abcdef0123456789a", Modified: true,
			GoVersion: "go1.26.8"}, "leasehold 05d4a62abcde-dirty\nrevision  05d4a62abcdef0123456789abcdef0123456789a (modified)\n"},
	} {
		var b bytes.Buffer
		printVersion(&b, tc.info)
		if !strings.HasPrefix(b.String(), tc.want) {
			t.Errorf("printVersion(%+v) = %q; want it to begin %q", tc.info, b.String(), tc.want)
		}
	}
}

// goVersionM matches the lines of `go version -m` this test reads: the
// toolchain, and the VCS revision if the go command recorded one.
var goVersionM = regexp.MustCompile(`(?m)^\S+: (go\S+)$|^\s+build\s+vcs\.revision=(\S+)$`)

// TestVersionCommand builds leasehold with its version set at link time as
// the package documents it, and runs `version` and `--version`: each
// prints that version, and the toolchain and revision the binary records.
func TestVersionCommand(t *testing.T) {
	if testing.Short() {
		t.Skip("builds leasehold")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	bin := filepath.Join(t.TempDir(), "leasehold")
	build := exec.CommandContext(ctx, "go", "build", "-o", bin,
		"-ldflags", "-X github.com/leasehold/leasehold/internal/buildinfo.version=v9.8.7-test", "github.com/leasehold/leasehold/cmd/leasehold")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	recorded, err := exec.CommandContext(ctx, "go", "version", "-m", bin).Output()
	if err != nil {
		t.Fatalf("go version -m: %v", err)
	}
	goVersion, revision := "", "unknown"
	for _, m := range goVersionM.FindAllStringSubmatch(string(recorded), -1) {
		if m[1] != "" {
			goVersion = m[1]
		} else {
			revision = m[2]
		}
	}
	if goVersion == "" {
		t.Fatalf("no toolchain in go version -m's output:\n%s", recorded)
	}
	for _, arg := range []string{"version", "--version"} {
		out, err := exec.CommandContext(ctx, bin, arg).Output()
		if err != nil {
			t.Fatalf("leasehold %s: %v", arg, err)
		}
		lines := strings.Split(string(out), "\n")
		if len(lines) < 3 || lines[0] != "leasehold v9.8.7-test" || !strings.HasPrefix(lines[1], "revision  "+revision) ||
			!strings.HasPrefix(lines[2], "go        "+goVersion+" ") {
			t.Errorf("leasehold %s printed\n%s\nwant version v9.8.7-test, revision %s, go %s", arg, out, revision, goVersion)
		}
	}
}
