package web

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/leasehold/leasehold/internal/buildinfo"
	"github.com/leasehold/leasehold/internal/pki"
)

// RegisterInfoMetrics registers in reg the metrics that say which build
// the node runs (b) and, if it serves TLS (src not nil), when its
// certificates expire; without TLS nothing expires and there are none.
func RegisterInfoMetrics(reg prometheus.Registerer, b buildinfo.Info, src *pki.Source) error {
	if err := reg.Register(newBuildInfoCollector(b)); err != nil {
		return fmt.Errorf("build info metric: %w", err)
	}
	if src == nil {
		return nil
	}
	if err := reg.Register(newCertExpiryCollector(src)); err != nil {
		return fmt.Errorf("certificate expiry metric: %w", err)
	}
	return nil
}

// newBuildInfoCollector returns leasehold_build_info, always 1, whose
// labels say which build the node runs: comparing it across nodes shows an
// upgrade's progress.
func newBuildInfoCollector(b buildinfo.Info) prometheus.Collector {
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "leasehold_build_info",
		Help:        "Always 1; the labels name the build this node runs: version (as `leasehold version` prints it), VCS revision, Go version.",
		ConstLabels: prometheus.Labels{"version": b.Version, "revision": b.Revision, "goversion": b.GoVersion},
	})
	g.Set(1)
	return g
}

// certExpiryCollector exports when the certificates of a node's pki.Source
// expire, read at each scrape: a certificate rotated on disk is used
// without a restart, so the gauge follows the files, not the start-up.
type certExpiryCollector struct {
	src  *pki.Source
	desc *prometheus.Desc
}

// newCertExpiryCollector returns
// leasehold_tls_certificate_expiry_timestamp_seconds{cert}: the NotAfter,
// in Unix seconds, of the node's certificate (cert="node") and of the CA
// that verifies it (cert="ca"), as src has them now.
func newCertExpiryCollector(src *pki.Source) prometheus.Collector {
	return &certExpiryCollector{src: src, desc: prometheus.NewDesc("leasehold_tls_certificate_expiry_timestamp_seconds",
		"When a certificate this node uses expires (NotAfter, Unix seconds): cert node is its own, "+
			"as it would present it now; ca, the CA certificate that verifies it.", []string{"cert"}, nil)}
}

func (c *certExpiryCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *certExpiryCollector) Collect(ch chan<- prometheus.Metric) {
	node, ca := c.src.NotAfter()
	ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(node.Unix()), "node")
	ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(ca.Unix()), "ca")
}
