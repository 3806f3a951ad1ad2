package proc_test

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"testing"
	"time"

	"github.com/leasehold/leasehold/internal/proc"
	"github.com/leasehold/leasehold/internal/proc/proctest"
)

// childEnv makes the test binary a child process of the tests below, in
// the mode it names, instead of running tests.
const childEnv = "LEASEHOLD_PROC_TEST_CHILD"

func TestMain(m *testing.M) {
	if mode := os.Getenv(childEnv); mode != "" {
		os.Exit(child(mode))
	}
	os.Exit(proctest.Main(m))
}

// child is the body of a child process; it returns the exit code.
func child(mode string) int {
	switch mode {
	case "lines": // stdout lines, the last without a newline; stderr; env
		fmt.Println("one")
		fmt.Println("two")
		fmt.Println(os.Getenv("PROC_TEST_X"))
		fmt.Fprintln(os.Stderr, "to stderr")
		fmt.Print("tail")
		return 0
	case "exit3":
		return 3
	case "block": // runs until signalled
	case "ignore-term": // SIGTERM does nothing; says so once it holds
		signal.Ignore(syscall.SIGTERM)
		fmt.Println("ready")
	case "runner": // starts a blocking grandchild with proc, names its pid
		self, err := os.Executable()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		p := proc.New("grandchild", self, nil, proc.Options{Env: []string{childEnv + "=block"}})
		if err := p.Start(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		fmt.Printf("child %d\n", p.PID())
	default:
		fmt.Fprintf(os.Stderr, "unknown child mode %q\n", mode)
		return 2
	}
	for {
		time.Sleep(time.Hour) // a child that runs until it is signalled
	}
}
