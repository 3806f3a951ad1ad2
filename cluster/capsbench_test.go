package cluster

import (
	"fmt"
	"testing"
)

// BenchmarkClusterAcquireAtSessionCap is BenchmarkClusterAcquire with the
// machine at its session cap: the workers' own sessions fill MaxSessions, so
// every request, though its client holds a session, is looked up under the
// machine's lock before it is proposed (caps.go). Compare with
// BenchmarkClusterAcquire at the same workers.
func BenchmarkClusterAcquireAtSessionCap(b *testing.B) {
	for _, workers := range []int{64, 1024} {
		b.Run(fmt.Sprintf("workers=%d", workers), func(b *testing.B) {
			benchClusterAcquire(b, workers, func(c *Config) { c.MaxSessions = workers })
		})
	}
}
