package proc

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strings"
)

// LeaseholdPackage is the import path of the leasehold command, whose
// `serve` is a node.
const LeaseholdPackage = "github.com/leasehold/leasehold/cmd/leasehold"

// Build runs `go build -o out [-tags tags] pkg` with the go command on PATH,
// in the working directory (which must be in the module), and returns an
// error holding the compiler's output if it fails. Tags are build tags such
// as "chaosclock".
func Build(ctx context.Context, out, pkg string, tags ...string) error {
	args := []string{"build", "-o", out}
	if len(tags) > 0 {
		args = append(args, "-tags", strings.Join(tags, ","))
	}
	cmd := exec.CommandContext(ctx, "go", append(args, pkg)...)
	var output bytes.Buffer
	cmd.Stdout, cmd.Stderr = &output, &output
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go %s: %w\n%s", strings.Join(cmd.Args[1:], " "), err, bytes.TrimSpace(output.Bytes()))
	}
	return nil
}
