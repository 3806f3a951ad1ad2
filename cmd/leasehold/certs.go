package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/leasehold/leasehold/internal/pki"
)

const day = 24 * time.Hour

// runCerts makes a CA (`certs ca`) and the certificates it signs (`certs
// node ID`, `certs operator NAME`, `certs client NAME`), as PEM files in
// --dir: ca.pem and ca-key.pem, <role>-<name>.pem and <role>-<name>-key.pem,
// keys with mode 0600. It never overwrites a file unless --force: a
// certificate written again over its files is a rotation, which a running
// node or client picks up for its new connections.
// certsUsage names the kinds; each kind's -h lists its flags.
const certsUsage = "usage: leasehold certs ca|node|operator|client|gossip-key [--dir DIR] [flags] [NAME]\n" +
	"  ca                 make the CA: DIR/ca.pem (trusted by everyone) and DIR/ca-key.pem (keep it secret)\n" +
	"  node ID            a node's certificate, for serving and for Raft; --hosts names where it is served\n" +
	"  operator NAME      may call every RPC: set and delete limits\n" +
	"  client NAME        may acquire, release and read limits and status\n" +
	"  gossip-key         the gossip keyring, DIR/gossip.key (serve --gossip-key-file)"

func runCerts(_ context.Context, args []string, stdout io.Writer) error {
	if len(args) == 0 {
		return errors.New(certsUsage)
	}
	if h := args[0]; h == "-h" || h == "-help" || h == "--help" || h == "help" {
		fmt.Fprintln(stdout, certsUsage)
		return flag.ErrHelp
	}
	kind := args[0]
	if kind == "gossip-key" {
		return runGossipKey(args[1:], stdout)
	}
	fs := flag.NewFlagSet("certs "+kind, flag.ContinueOnError)
	dir := fs.String("dir", filepath.Join("data", "tls"), "directory of the CA and the certificates")
	force := fs.Bool("force", false, "overwrite existing files (for a certificate: a rotation)")
	var days *int
	var hosts, name *string
	switch kind {
	case "ca":
		days = fs.Int("days", int(pki.DefaultCALifetime/day), "days the CA is valid")
		name = fs.String("name", "Leasehold CA", "the CA's name")
	case "node", "operator", "client":
		days = fs.Int("days", int(pki.DefaultCertLifetime/day), "days the certificate is valid (at most until the CA expires)")
		if kind == "node" {
			hosts = fs.String("hosts", "localhost,127.0.0.1,::1", "DNS names and IP addresses the node is served at, comma-separated")
		}
	default:
		return fmt.Errorf("unknown kind %q; want ca, node, operator, client or gossip-key", kind)
	}
	// Accept flags before and after the name.
	if err := parseFlags(fs, args[1:], stdout); err != nil {
		return err
	}
	rest := fs.Args()
	var id string
	if kind != "ca" {
		if len(rest) == 0 {
			return fmt.Errorf("certs %s: missing the %s", kind, map[bool]string{true: "node ID", false: "NAME"}[kind == "node"])
		}
		id, rest = rest[0], rest[1:]
		if err := parseFlags(fs, rest, stdout); err != nil {
			return err
		}
		rest = fs.Args()
	}
	if len(rest) > 0 {
		return fmt.Errorf("certs %s: unexpected arguments %q", kind, rest)
	}
	if *days < 1 {
		return fmt.Errorf("--days %d: want at least 1", *days)
	}
	lifetime := time.Duration(*days) * day
	caCert, caKey := pki.CAFiles(*dir)

	if kind == "ca" {
		if err := notThere(*force, caCert, caKey); err != nil {
			return err
		}
		ca, err := pki.NewCA(*name, lifetime)
		if err != nil {
			return err
		}
		keyPEM, err := ca.KeyPEM()
		if err != nil {
			return err
		}
		if err := os.MkdirAll(*dir, 0o700); err != nil {
			return err
		}
		if err := pki.WriteKeyPair(caCert, ca.CertPEM(), caKey, keyPEM); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "wrote %s (give it to every node and client: --tls-ca, --ca, $%s)\n", caCert, envCA)
		fmt.Fprintf(stdout, "wrote %s (keep it secret: it signs certificates)\n", caKey)
		return nil
	}

	role, err := pki.ParseRole(kind)
	if err != nil {
		return err
	}
	ident := pki.Identity{Role: role, Name: id}
	if err := ident.Validate(); err != nil {
		return err
	}
	ca, err := pki.LoadCA(caCert, caKey)
	if err != nil {
		return fmt.Errorf("%w (make one with `leasehold certs ca --dir %s`)", err, *dir)
	}
	var hostList []string
	if hosts != nil {
		if hostList = splitList(*hosts); len(hostList) == 0 {
			return errors.New("--hosts: give at least one DNS name or IP address")
		}
	}
	certFile, keyFile := pki.CertFiles(*dir, ident)
	if err := notThere(*force, certFile, keyFile); err != nil {
		return err
	}
	certPEM, keyPEM, err := ca.Issue(ident, hostList, lifetime)
	if err != nil {
		return err
	}
	if err := pki.WriteKeyPair(certFile, certPEM, keyFile, keyPEM); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote %s and %s for %s\n", certFile, keyFile, ident.URI())
	return nil
}

// notThere fails if any of files exists, unless force.
func notThere(force bool, files ...string) error {
	if force {
		return nil
	}
	for _, f := range files {
		if _, err := os.Stat(f); err == nil {
			return fmt.Errorf("%s exists; pass --force to replace it", f)
		} else if !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return nil
}
