package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"runtime"

	"github.com/leasehold/leasehold/internal/buildinfo"
)

// runVersion prints which build this binary is: the version each node
// gossips (and `members` shows), the revision it was built from and the Go
// toolchain.
func runVersion(_ context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("version", flag.ContinueOnError)
	if err := parseFlags(fs, args, stdout); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	printVersion(stdout, buildinfo.Read())
	return nil
}

func printVersion(w io.Writer, b buildinfo.Info) {
	rev := b.Revision
	switch {
	case rev == "":
		rev = "unknown"
	case b.Modified:
		rev += " (modified)"
	}
	fmt.Fprintf(w, "leasehold %s\nrevision  %s\ngo        %s %s/%s\n", b.Version, rev, b.GoVersion, runtime.GOOS, runtime.GOARCH)
}
