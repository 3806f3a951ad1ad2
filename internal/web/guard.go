package web

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/leasehold/leasehold/transport"
)

// guardCollector exports a transport.Guard's counters: what the client
// API shed and refused.
type guardCollector struct {
	g     *transport.Guard
	descs struct {
		conns, handshakes, inflight, connsShed, displaced, requestsShed, denied, unauthenticated, acceptErrors *prometheus.Desc
	}
}

// NewGuardCollector returns a collector of g's counters, read at scrape
// time: leasehold_client_connections, leasehold_client_handshakes,
// leasehold_requests_in_flight, leasehold_connections_shed_total,
// leasehold_handshakes_displaced_total, leasehold_requests_shed_total,
// leasehold_permission_denied_total, leasehold_unauthenticated_total and
// leasehold_accept_errors_total.
func NewGuardCollector(g *transport.Guard) prometheus.Collector {
	c := &guardCollector{g: g}
	d := &c.descs
	d.conns = prometheus.NewDesc("leasehold_client_connections", "Client API connections open now, past their handshake.", nil, nil)
	d.handshakes = prometheus.NewDesc("leasehold_client_handshakes", "Client API connections in their handshake now.", nil, nil)
	d.inflight = prometheus.NewDesc("leasehold_requests_in_flight", "Client API requests being served now.", nil, nil)
	d.connsShed = prometheus.NewDesc("leasehold_connections_shed_total",
		"Client connections closed as their handshake ended, over --max-conns.", nil, nil)
	d.displaced = prometheus.NewDesc("leasehold_handshakes_displaced_total",
		"Client connections closed in their handshake for a new one, at the handshake cap.", nil, nil)
	d.requestsShed = prometheus.NewDesc("leasehold_requests_shed_total",
		"Client requests answered RESOURCE_EXHAUSTED, over --max-in-flight.", nil, nil)
	d.denied = prometheus.NewDesc("leasehold_permission_denied_total",
		"Client requests refused PERMISSION_DENIED: the certificate's role may not make the call.", nil, nil)
	d.unauthenticated = prometheus.NewDesc("leasehold_unauthenticated_total",
		"Client requests refused UNAUTHENTICATED: no identity the node accepts.", nil, nil)
	d.acceptErrors = prometheus.NewDesc("leasehold_accept_errors_total",
		"Failed accepts on the client API listener (out of file descriptors, ...).", nil, nil)
	return c
}

func (c *guardCollector) Describe(ch chan<- *prometheus.Desc) {
	d := &c.descs
	for _, x := range []*prometheus.Desc{d.conns, d.handshakes, d.inflight, d.connsShed, d.displaced, d.requestsShed, d.denied, d.unauthenticated, d.acceptErrors} {
		ch <- x
	}
}

func (c *guardCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.g.Stats()
	d := &c.descs
	ch <- prometheus.MustNewConstMetric(d.conns, prometheus.GaugeValue, float64(st.Conns))
	ch <- prometheus.MustNewConstMetric(d.handshakes, prometheus.GaugeValue, float64(st.Handshakes))
	ch <- prometheus.MustNewConstMetric(d.inflight, prometheus.GaugeValue, float64(st.InFlight))
	ch <- prometheus.MustNewConstMetric(d.connsShed, prometheus.CounterValue, float64(st.ConnsShed))
	ch <- prometheus.MustNewConstMetric(d.displaced, prometheus.CounterValue, float64(st.Displaced))
	ch <- prometheus.MustNewConstMetric(d.requestsShed, prometheus.CounterValue, float64(st.RequestsShed))
	ch <- prometheus.MustNewConstMetric(d.denied, prometheus.CounterValue, float64(st.Denied))
	ch <- prometheus.MustNewConstMetric(d.unauthenticated, prometheus.CounterValue, float64(st.Unauthenticated))
	ch <- prometheus.MustNewConstMetric(d.acceptErrors, prometheus.CounterValue, float64(st.AcceptErrors))
}
