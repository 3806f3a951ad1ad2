//go:build !unix

package cluster

// threadCPU and processCPU read getrusage, which exists only on Unix; the
// benchmarks report 0 CPU elsewhere.
func threadCPU() int64  { return 0 }
func processCPU() int64 { return 0 }
