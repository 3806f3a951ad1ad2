package proc

import (
	"os"
	"syscall"
)

// Windows has no process groups of this kind, no SIGSTOP and no SIGTERM for
// another process: Pause and Resume fail, and Stop kills.
var (
	sigStop os.Signal
	sigCont os.Signal
	sigTerm os.Signal = os.Kill
)

func sysProcAttr() *syscall.SysProcAttr { return nil }
