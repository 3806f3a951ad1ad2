package pki

import "crypto/tls"

// OptionalClientConfig is ServerConfig for a server where a client
// certificate is optional: one that is presented is verified against the
// current CA bundle (the handshake fails if it does not verify), and the
// server decides per request what a caller without one may do, by
// PeerIdentity of the connection. A node's HTTP listener uses it: load
// balancers and Kubernetes probes present no certificate to /healthz and
// /readyz. Each handshake reads the Source's current files.
func (s *Source) OptionalClientConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			m := s.material()
			return &tls.Config{
				MinVersion:   tls.VersionTLS12,
				Certificates: []tls.Certificate{*m.cert},
				ClientCAs:    m.pool,
				ClientAuth:   tls.VerifyClientCertIfGiven,
			}, nil
		},
	}
}
