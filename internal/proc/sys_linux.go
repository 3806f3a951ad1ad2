package proc

import "syscall"

// sysProcAttr puts a child in its own process group, so a Ctrl-C at the
// terminal reaches only the runner, and has the kernel kill it if the
// runner's thread that started it dies (Pdeathsig; Go does not end its
// threads unless a goroutine locked to one exits locked).
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
