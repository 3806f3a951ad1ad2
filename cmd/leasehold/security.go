package main

import (
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"

	"github.com/leasehold/leasehold/internal/pki"
	"github.com/leasehold/leasehold/internal/proc"
)

// Environment variables the CLI reads when its flags are not given, as
// Consul's CLI reads CONSUL_CACERT and friends.
const (
	envCA   = "LEASEHOLD_CA"
	envCert = "LEASEHOLD_CERT"
	envKey  = "LEASEHOLD_KEY"
)

// serveSecurity are serve's TLS flags.
type serveSecurity struct {
	ca, cert, key *string
	insecure      *bool
	allowRemote   *bool
}

func addServeSecurityFlags(fs *flag.FlagSet) *serveSecurity {
	return &serveSecurity{
		ca:          fs.String("tls-ca", "", "PEM bundle of the CA(s) that sign the cluster's certificates (with --tls-cert and --tls-key)"),
		cert:        fs.String("tls-cert", "", "this node's certificate, PEM (made by leasehold certs node); it must name --id"),
		key:         fs.String("tls-key", "", "the key of --tls-cert, PEM"),
		insecure:    fs.Bool("insecure", false, "serve without TLS: anyone who reaches the node can rewrite its state (loopback only, unless --insecure-allow-remote)"),
		allowRemote: fs.Bool("insecure-allow-remote", false, "with --insecure, allow listening on addresses that are not loopback"),
	}
}

// source returns the TLS source the node serves with, or nil for plain
// text, after checking the flags: the three files go together and exclude
// --insecure; one or the other is required; plain text listens on loopback
// only unless allowed, and logs a loud warning.
func (s *serveSecurity) source(log *slog.Logger, listen ...string) (*pki.Source, error) {
	given := 0
	for _, f := range []string{*s.ca, *s.cert, *s.key} {
		if f != "" {
			given++
		}
	}
	switch {
	case given > 0 && given < 3:
		return nil, errors.New("--tls-ca, --tls-cert and --tls-key go together")
	case given == 3 && *s.insecure:
		return nil, errors.New("--insecure and the --tls-* flags exclude each other")
	case given == 3:
		warnUnprotectedKey(log, "--tls-key", *s.key)
		return pki.NewSource(*s.cert, *s.key, *s.ca, log)
	case !*s.insecure:
		return nil, errors.New("TLS is required: pass --tls-ca, --tls-cert and --tls-key (see `leasehold certs`), or --insecure for local play")
	}
	if !*s.allowRemote {
		for _, a := range listen {
			if !isLoopback(a) {
				return nil, fmt.Errorf("without TLS, %s is not a loopback address: anyone who reaches it could rewrite the cluster's state; "+
					"serve with --tls-ca/--tls-cert/--tls-key, or pass --insecure-allow-remote", a)
			}
		}
	}
	log.Warn("INSECURE: serving without TLS; any process that reaches the client or Raft port can change limits and rewrite the node's state. " +
		"For local play only: pass --tls-ca, --tls-cert and --tls-key (see `leasehold certs`)")
	return nil, nil
}

// isLoopback reports whether addr (host:port) listens on loopback only:
// localhost or a loopback IP. An empty host (every interface) is not.
func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// clientSecurity are the TLS flags of the commands that dial a cluster.
type clientSecurity struct {
	ca, cert, key *string
	insecure      *bool
}

func addClientSecurityFlags(fs *flag.FlagSet) *clientSecurity {
	return &clientSecurity{
		ca:       fs.String("ca", "", "PEM bundle of the cluster's CA (default $"+envCA+")"),
		cert:     fs.String("cert", "", "your certificate, PEM: an operator's to change limits, a client's to read (default $"+envCert+")"),
		key:      fs.String("key", "", "the key of --cert, PEM (default $"+envKey+")"),
		insecure: fs.Bool("insecure", false, "talk plain text to a node serving without TLS"),
	}
}

// files returns the certificate files from the flags, or else from the
// environment; nil means plain text, which needs --insecure.
func (c *clientSecurity) files() (*proc.TLSFiles, error) {
	f := proc.TLSFiles{CA: orEnv(*c.ca, envCA), Cert: orEnv(*c.cert, envCert), Key: orEnv(*c.key, envKey)}
	given := 0
	for _, v := range []string{f.CA, f.Cert, f.Key} {
		if v != "" {
			given++
		}
	}
	switch {
	case *c.insecure && (*c.ca != "" || *c.cert != "" || *c.key != ""):
		return nil, errors.New("--insecure and --ca/--cert/--key exclude each other")
	case *c.insecure:
		return nil, nil
	case given == 3:
		return &f, nil
	case given > 0:
		return nil, fmt.Errorf("give the CA, certificate and key together (--ca/--cert/--key or $%s/$%s/$%s)", envCA, envCert, envKey)
	}
	return nil, fmt.Errorf("no certificate: pass --ca, --cert and --key, or set $%s, $%s and $%s "+
		"(for `make cluster`'s: export %s=data/tls/ca.pem %s=data/tls/operator-admin.pem %s=data/tls/operator-admin-key.pem, "+
		"as `leasehold cluster` prints); --insecure talks plain text to nodes serving without TLS",
		envCA, envCert, envKey, envCA, envCert, envKey)
}

// security returns the connections' security for what files returned:
// TLS with files' certificate (servers checked to be nodes of its CA
// naming the host dialed), or plain text for nil, which files returns only
// with --insecure.
func security(files *proc.TLSFiles) proc.Security {
	if files == nil {
		return proc.Plaintext
	}
	return proc.Security{TLS: files}
}

func orEnv(v, env string) string {
	if v != "" {
		return v
	}
	return os.Getenv(env)
}
