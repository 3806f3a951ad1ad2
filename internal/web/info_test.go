package web

import (
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/leasehold/leasehold/internal/buildinfo"
	"github.com/leasehold/leasehold/internal/pki"
	"github.com/leasehold/leasehold/internal/pki/pkitest"
)

func TestBuildInfoMetric(t *testing.T) {
	c := newBuildInfoCollector(buildinfo.Info{Version: "v1.4.0", Revision: "05d4a62abcdef0123456789abcdef0123456789a",
		GoVersion: "go1.26.8"})
	want := `
# HELP leasehold_build_info Always 1; the labels name the build this node runs: version (as ` + "`leasehold version`" + ` prints it), VCS revision, Go version.
# TYPE leasehold_build_info gauge
leasehold_build_info{goversion="go1.26.8",revision="05d4a62abcdef0123456789abcdef0123456789a",version="v1.4.0"} 1
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want)); err != nil {
		t.Fatal(err)
	}
}

// TestRegisterInfoMetrics: the build's metric always, the certificates'
// only with TLS.
func TestRegisterInfoMetrics(t *testing.T) {
	for _, tc := range []struct {
		name string
		src  *pki.Source
		want int // series of leasehold_tls_certificate_expiry_timestamp_seconds
	}{
		{"tls", pkitest.New(t).Source(pkitest.Node("n1")), 2},
		{"insecure", nil, 0},
	} {
		reg := prometheus.NewRegistry()
		if err := RegisterInfoMetrics(reg, buildinfo.Read(), tc.src); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if n := testutil.CollectAndCount(reg, "leasehold_build_info"); n != 1 {
			t.Errorf("%s: leasehold_build_info has %d series; want 1", tc.name, n)
		}
		if n := testutil.CollectAndCount(reg, "leasehold_tls_certificate_expiry_timestamp_seconds"); n != tc.want {
			t.Errorf("%s: leasehold_tls_certificate_expiry_timestamp_seconds has %d series; want %d", tc.name, n, tc.want)
		}
	}
}

// expiryText is the exposition NewCertExpiryCollector should give.
func expiryText(node, ca time.Time) string {
	return fmt.Sprintf(`
# HELP leasehold_tls_certificate_expiry_timestamp_seconds When a certificate this node uses expires (NotAfter, Unix seconds): cert node is its own, as it would present it now; ca, the CA certificate that verifies it.
# TYPE leasehold_tls_certificate_expiry_timestamp_seconds gauge
leasehold_tls_certificate_expiry_timestamp_seconds{cert="ca"} %d
leasehold_tls_certificate_expiry_timestamp_seconds{cert="node"} %d
`, ca.Unix(), node.Unix())
}

// TestCertExpiryFollowsRotation: the gauge is the NotAfter of the
// certificate the node presents now, so a certificate rotated on disk,
// which the node uses without a restart, moves it.
func TestCertExpiryFollowsRotation(t *testing.T) {
	d := pkitest.New(t)
	f := d.Issue(pkitest.Node("n1")) // valid for an hour
	src, err := pki.NewSource(f.Cert, f.Key, f.CA, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	c := newCertExpiryCollector(src)
	first, ca := pkitest.NotAfter(t, f.Cert), d.CA.Certificate().NotAfter
	if err := testutil.CollectAndCompare(c, strings.NewReader(expiryText(first, ca))); err != nil {
		t.Fatal(err)
	}

	certPEM, keyPEM, err := d.CA.Issue(pkitest.Node("n1"), nil, 3*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := pki.WriteKeyPair(f.Cert, certPEM, f.Key, keyPEM); err != nil {
		t.Fatal(err)
	}
	rotated := pkitest.NotAfter(t, f.Cert)
	if !rotated.After(first) {
		t.Fatalf("the rotated certificate expires %v, not after the first (%v)", rotated, first)
	}
	if err := testutil.CollectAndCompare(c, strings.NewReader(expiryText(rotated, ca))); err != nil {
		t.Fatalf("after the rotation: %v", err)
	}
}
