package client

import (
	"crypto/tls"
	"errors"
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/leasehold/leasehold/internal/pki"
)

// security is how a Client protects its connections: at most one of
// WithTLS, WithTLSConfig and WithInsecure.
type security struct {
	files      *[3]string  // WithTLS: cert, key, CA
	tlsConfig  *tls.Config // WithTLSConfig
	insecure   bool        // WithInsecure
	given      int         // how many of the three options were passed
	nilTLSConf bool        // WithTLSConfig(nil)
}

// WithTLS makes the Client speak mutual TLS to the cluster: it presents the
// certificate in certFile, whose key is in keyFile, and accepts a node only
// if its certificate is a node certificate signed by a CA in caFile and
// names the host dialed. The files are PEM, as `leasehold certs` writes
// them; they are read at Dial, and again when they change, so that new
// connections use a rotated certificate or CA. A client certificate may
// acquire and release; SetLimit and DeleteLimit need an operator's.
//
// Pass at most one of WithTLS, WithTLSConfig and WithInsecure. With none,
// the Client speaks plain text, as before TLS existed; that default may
// change, so say WithInsecure if you mean it.
func WithTLS(certFile, keyFile, caFile string) Option {
	return func(c *config) {
		c.security.files = &[3]string{certFile, keyFile, caFile}
		c.security.given++
	}
}

// WithTLSConfig makes the Client speak TLS with cfg, used as is (gRPC adds
// its ALPN protocol and a TLS 1.2 minimum). Prefer WithTLS, which reloads
// rotated files and checks the server's role.
func WithTLSConfig(cfg *tls.Config) Option {
	return func(c *config) {
		c.security.tlsConfig = cfg
		c.security.nilTLSConf = cfg == nil
		c.security.given++
	}
}

// WithInsecure makes the Client speak plain text: no certificate, no
// encryption. For loopback and local play only; a node serving TLS refuses
// it.
func WithInsecure() Option {
	return func(c *config) {
		c.security.insecure = true
		c.security.given++
	}
}

// validate reports a misuse of the security options.
func (s *security) validate() error {
	var errs []error
	if s.given > 1 {
		errs = append(errs, errors.New("pass at most one of WithTLS, WithTLSConfig and WithInsecure"))
	}
	if s.nilTLSConf {
		errs = append(errs, errors.New("WithTLSConfig: nil config"))
	}
	if f := s.files; f != nil && (f[0] == "" || f[1] == "" || f[2] == "") {
		errs = append(errs, fmt.Errorf("WithTLS: certificate %q, key %q and CA %q must all be given", f[0], f[1], f[2]))
	}
	return errors.Join(errs...)
}

// dialOption returns the transport credentials of the chosen security,
// loading WithTLS's files.
func (s *security) dialOption(c *config) (grpc.DialOption, error) {
	switch {
	case s.files != nil:
		src, err := pki.NewSource(s.files[0], s.files[1], s.files[2], c.logger)
		if err != nil {
			return nil, err
		}
		return grpc.WithTransportCredentials(credentials.NewTLS(src.ClientConfig(true, pki.RequireRole(pki.RoleNode)))), nil
	case s.tlsConfig != nil:
		return grpc.WithTransportCredentials(credentials.NewTLS(s.tlsConfig)), nil
	}
	return grpc.WithTransportCredentials(insecure.NewCredentials()), nil
}
