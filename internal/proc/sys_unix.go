//go:build unix && !linux

package proc

import "syscall"

// sysProcAttr puts a child in its own process group, so a Ctrl-C at the
// terminal reaches only the runner. Outside Linux there is no Pdeathsig: a
// child outlives a runner killed before it could stop it.
func sysProcAttr() *syscall.SysProcAttr { return &syscall.SysProcAttr{Setpgid: true} }
