package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/leasehold/leasehold/internal/proc"
)

// buildCLI builds leasehold into a temporary directory and returns its path.
func buildCLI(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds leasehold")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	bin := filepath.Join(t.TempDir(), "leasehold")
	if err := proc.Build(ctx, bin, proc.LeaseholdPackage); err != nil {
		t.Fatal(err)
	}
	return bin
}

// runCLI runs bin with args and returns its exit status, stdout and stderr.
func runCLI(t *testing.T, bin string, args ...string) (int, string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if exit, ok := errors.AsType[*exec.ExitError](err); ok {
		return exit.ExitCode(), stdout.String(), stderr.String()
	}
	if err != nil {
		t.Fatalf("leasehold %s: %v", strings.Join(args, " "), err)
	}
	return 0, stdout.String(), stderr.String()
}

// TestHelpExitsZero: asking for help is not an error. Regression: every
// --help exited 2 with the usage on stderr, as a mistyped flag does, so
// `leasehold serve --help | less` showed nothing and a script could not
// tell the two apart.
func TestHelpExitsZero(t *testing.T) {
	bin := buildCLI(t)
	for _, args := range [][]string{
		{"--help"}, {"-h"}, {"help"},
		{"serve", "--help"}, {"status", "-h"}, {"cluster", "--help"}, {"certs", "--help"}, {"certs", "node", "-h"},
		{"bench", "compare", "-h"}, {"remove", "--help"}, {"version", "-h"},
	} {
		code, stdout, stderr := runCLI(t, bin, args...)
		if code != 0 || !strings.Contains(stdout, "usage") && !strings.Contains(stdout, "Usage") || stderr != "" {
			t.Errorf("leasehold %s: exit %d, stdout %q, stderr %q; want exit 0 and the usage on stdout only",
				strings.Join(args, " "), code, stdout, stderr)
		}
	}
}

// TestUsageErrorsExitTwo: a command line that does not parse exits 2 with
// the problem on stderr, and a command that fails exits 1. Regression: a
// flag no command defines exited 1, as a failed command does.
func TestUsageErrorsExitTwo(t *testing.T) {
	bin := buildCLI(t)
	for _, tc := range []struct {
		args []string
		code int
		says string
	}{
		{nil, 2, "usage: leasehold"},
		{[]string{"frobnicate"}, 2, `unknown command "frobnicate"`},
		{[]string{"status", "--bogus"}, 2, "flag provided but not defined: -bogus"},
		{[]string{"serve", "--max-conns", "many"}, 2, `invalid value "many" for flag -max-conns`},
		{[]string{"remove"}, 2, "usage: leasehold remove"},
		{[]string{"certs", "ca", "--dir", t.TempDir(), "--days", "0"}, 1, "--days"},
	} {
		code, stdout, stderr := runCLI(t, bin, tc.args...)
		if code != tc.code || stdout != "" || !strings.Contains(stderr, tc.says) {
			t.Errorf("leasehold %s: exit %d, stdout %q, stderr %q; want exit %d, nothing on stdout, %q on stderr",
				strings.Join(tc.args, " "), code, stdout, stderr, tc.code, tc.says)
		}
	}
}

// TestHelpGoesToStdout: every command's -h prints its usage on the stdout
// it is given and nothing on stderr.
func TestHelpGoesToStdout(t *testing.T) {
	for _, c := range helpCommands {
		stdout, stderr, err := runHelp(t, c)
		if !errors.Is(err, flag.ErrHelp) || stdout == "" || stderr != "" {
			t.Errorf("leasehold %s -h: %v, stdout %q, stderr %q; want flag.ErrHelp and the usage on stdout only", c.name, err, stdout, stderr)
		}
	}
}
