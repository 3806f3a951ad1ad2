package loopback

import (
	"fmt"
	"net"
	"testing"
)

func TestFreePortsAreDistinctAndBindable(t *testing.T) {
	ports, err := FreePorts(8)
	if err != nil {
		t.Fatal(err)
	}
	if len(ports) != 8 {
		t.Fatalf("got %d ports, want 8", len(ports))
	}
	seen := map[int]bool{}
	for _, p := range ports {
		if seen[p] {
			t.Fatalf("port %d returned twice: %v", p, ports)
		}
		seen[p] = true
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			t.Fatalf("port %d is not free after FreePorts returned: %v", p, err)
		}
		l.Close()
	}
}

func TestStablePortsAreBelowTheEphemeralRangeAndBindable(t *testing.T) {
	ports, err := StablePorts(8)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[int]bool{}
	for _, p := range ports {
		if p < 10000 || p >= EphemeralStart() || seen[p] {
			t.Errorf("port %d: want distinct ports in [10000, %d)", p, EphemeralStart())
		}
		seen[p] = true
		if !bindable(p) {
			t.Errorf("port %d is not bindable for TCP and UDP", p)
		}
	}
}
