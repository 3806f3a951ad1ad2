package loopback

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
)

// StablePorts returns n distinct loopback ports below the kernel's
// ephemeral range (Linux's ip_local_port_range; 32768 elsewhere), chosen at
// random from 10000 up and each found free for both TCP and UDP a moment
// ago. A port in the ephemeral range can be taken by any outgoing
// connection while it waits to be bound, which a node started much later
// (a chaos run's spare) or one that gossips (TCP and UDP on one port) runs
// into; ports below it are only ever taken by explicit binds.
func StablePorts(n int) ([]int, error) {
	lo, hi := 10000, EphemeralStart()
	if hi-lo < 4*n {
		return FreePorts(n)
	}
	seen := map[int]bool{}
	var ports []int
	for tries := 0; len(ports) < n; tries++ {
		if tries > 100*n {
			return nil, fmt.Errorf("find %d stable loopback ports: too many in use", n)
		}
		p := lo + rand.IntN(hi-lo)
		if seen[p] {
			continue
		}
		seen[p] = true
		if bindable(p) {
			ports = append(ports, p)
		}
	}
	return ports, nil
}

// bindable reports whether 127.0.0.1:port can be bound for TCP and UDP.
func bindable(port int) bool {
	addr := "127.0.0.1:" + strconv.Itoa(port)
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return false
	}
	defer l.Close()
	u, err := net.ListenPacket("udp", addr)
	if err != nil {
		return false
	}
	u.Close()
	return true
}

// EphemeralStart returns the first port of the kernel's ephemeral range
// (Linux's ip_local_port_range; 32768 elsewhere or when it cannot be read).
// A port at or above it can be taken by any outgoing connection on the
// machine at any moment; one below it only by an explicit bind.
func EphemeralStart() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if v, err := strconv.Atoi(f[0]); err == nil && v > 1024 {
				return v
			}
		}
	}
	return 32768
}
