package web

import (
	"log/slog"
	"net"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/leasehold/leasehold/transport"
)

// TestGuardCollectorExportsHandshakes: a connection accepted through the
// Guard's listener and not past its handshake is leasehold_client_handshakes,
// not leasehold_client_connections.
func TestGuardCollectorExportsHandshakes(t *testing.T) {
	g, err := transport.NewGuard(transport.GuardConfig{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := g.Listener(raw)
	defer ln.Close()
	c, err := net.Dial("tcp", raw.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	reg := prometheus.NewRegistry()
	reg.MustRegister(NewGuardCollector(g))
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		m := mf.GetMetric()[0]
		got[mf.GetName()] = m.GetGauge().GetValue() + m.GetCounter().GetValue()
	}
	for name, want := range map[string]float64{
		"leasehold_client_handshakes":          1,
		"leasehold_client_connections":         0,
		"leasehold_handshakes_displaced_total": 0,
	} {
		if v, ok := got[name]; !ok || v != want {
			t.Errorf("%s = %v (exported %v); want %v", name, v, ok, want)
		}
	}
}
