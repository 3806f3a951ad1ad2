package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/leasehold/leasehold/internal/clustertest"
	"github.com/leasehold/leasehold/internal/loopback"
)

// TestServeWithTLSEnforcesRoles runs `serve` in-process with the
// certificates `certs` made, and the CLI against it: an operator's
// certificate sets a limit, a client's reads it but may not set or
// delete one (one key, or by prefix), and a command without a certificate
// gets no answer.
func TestServeWithTLSEnforcesRoles(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "tls")
	mustCerts(t, "ca", "--dir", dir)
	mustCerts(t, "node", "--dir", dir, "n1")
	mustCerts(t, "operator", "--dir", dir, "op")
	mustCerts(t, "client", "--dir", dir, "app")
	ports, err := loopback.StablePorts(2)
	if err != nil {
		t.Fatal(err)
	}
	grpcAddr, raftAddr := fmt.Sprintf("127.0.0.1:%d", ports[0]), fmt.Sprintf("127.0.0.1:%d", ports[1])

	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() {
		served <- runServe(ctx, []string{"--id", "n1", "--data", filepath.Join(t.TempDir(), "n1"),
			"--grpc-addr", grpcAddr, "--raft-addr", raftAddr, "--peers", "n1=" + raftAddr, "--log-level", "error",
			"--heartbeat-timeout", "50ms", "--election-timeout", "50ms", "--leader-lease-timeout", "50ms",
			"--tls-ca", dir + "/ca.pem", "--tls-cert", dir + "/node-n1.pem", "--tls-key", dir + "/node-n1-key.pem"}, nil)
	}()
	defer func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("serve: %v", err)
		}
	}()

	as := func(who string) []string {
		return []string{"--endpoints", grpcAddr, "--ca", dir + "/ca.pem", "--cert", dir + "/" + who + ".pem", "--key", dir + "/" + who + "-key.pem"}
	}
	run := func(fn func(context.Context, []string, *bytes.Buffer) error, args ...string) (string, error) {
		var out bytes.Buffer
		err := fn(context.Background(), args, &out)
		return out.String(), err
	}
	status := func(ctx context.Context, args []string, out *bytes.Buffer) error { return runStatus(ctx, args, out) }
	limits := func(ctx context.Context, args []string, out *bytes.Buffer) error { return runLimits(ctx, args, out) }

	deadline := time.Now().Add(20 * time.Second)
	for {
		out, err := run(status, as("operator-op")...)
		if err == nil && strings.Contains(out, "leader") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no leader over TLS within 20s: %v\n%s", err, out)
		}
		time.Sleep(50 * time.Millisecond) // polling a starting node, with a deadline
	}

	if _, err := run(limits, append([]string{"set"}, append(as("client-app"), "--limit", "5", "k")...)...); err == nil ||
		!strings.Contains(err.Error(), "permission denied") || !strings.Contains(err.Error(), "operator") {
		t.Errorf("limits set with a client certificate: %v; want permission denied, naming the operator's certificate", err)
	}
	if out, err := run(limits, append([]string{"set"}, append(as("operator-op"), "--limit", "5", "k")...)...); err != nil || out != "set k\n" {
		t.Fatalf("limits set with an operator certificate: %q, %v", out, err)
	}
	if out, err := run(limits, append([]string{"get"}, append(as("client-app"), "k")...)...); err != nil || !strings.Contains(out, `"limit":5`) {
		t.Errorf("limits get with a client certificate: %q, %v", out, err)
	}
	if _, err := run(limits, append([]string{"delete"}, append(as("client-app"), "k")...)...); err == nil || !strings.Contains(err.Error(), "permission denied") {
		t.Errorf("limits delete with a client certificate: %v; want permission denied", err)
	}
	if _, err := run(limits, append([]string{"delete"}, append(as("client-app"), "--prefix", "k", "--unpinned")...)...); err == nil ||
		!strings.Contains(err.Error(), "permission denied") || !strings.Contains(err.Error(), "DeleteLimits") {
		t.Errorf("limits delete --prefix with a client certificate: %v; want permission denied", err)
	}
	if out, err := run(limits, append([]string{"delete"}, append(as("operator-op"), "--prefix", "k", "--unpinned")...)...); err != nil ||
		out != `deleted 0 keys under "k" (unpinned only): every key under it is pinned, and kept`+"\n" {
		t.Errorf("limits delete --prefix k --unpinned with an operator certificate: %q, %v; want k, pinned, kept", out, err)
	}
	if out, err := run(status, "--endpoints", grpcAddr, "--insecure", "--timeout", "500ms"); err == nil {
		t.Errorf("status in plain text against a TLS node answered:\n%s", out)
	} else if !strings.Contains(err.Error(), "drop --insecure and pass --ca, --cert and --key") {
		t.Errorf("status in plain text against a TLS node: %v; want a hint to drop --insecure", err)
	}
	// The Raft port serves TLS too, but not the client API: the operator
	// gave the wrong port, and is told which one to give.
	if out, err := run(status, append(as("operator-op"), "--endpoints", raftAddr, "--timeout", "500ms")...); err == nil {
		t.Errorf("status against the Raft port answered:\n%s", out)
	} else if !strings.Contains(err.Error(), "(serve --grpc-addr") {
		t.Errorf("status against the Raft port: %v; want a hint naming --grpc-addr", err)
	}
	if _, err := run(status, append(as("client-app"), "--ca", dir+"/node-n1.pem")...); err == nil {
		t.Errorf("status trusting the wrong CA answered")
	}
}

// TestServeRefusesPlainTextOnEveryInterface: without TLS, a listen address
// that is not loopback is refused before anything is bound.
func TestServeRefusesPlainTextOnEveryInterface(t *testing.T) {
	err := runServe(context.Background(), []string{"--id", "n1", "--data", t.TempDir(), "--grpc-addr", "0.0.0.0:0",
		"--raft-addr", "127.0.0.1:7201", "--peers", "n1=127.0.0.1:7201", "--log-level", "error", "--insecure"}, nil)
	if err == nil || !strings.Contains(err.Error(), "--insecure-allow-remote") {
		t.Fatalf("serve --insecure on 0.0.0.0: %v; want a refusal naming --insecure-allow-remote", err)
	}
	if errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
}

// TestServeRefusesPlainTextGossipOnAnotherInterface: --gossip-addr is a
// listen address like the others. serve --insecure took a routable
// --gossip-addr without --insecure-allow-remote, and unencrypted gossip
// lets anyone who reaches it send the leader a leave for any voter.
func TestServeRefusesPlainTextGossipOnAnotherInterface(t *testing.T) {
	ports, err := loopback.StablePorts(2)
	if err != nil {
		t.Fatal(err)
	}
	err = runServe(context.Background(), []string{"--data", t.TempDir(), "--grpc-addr", fmt.Sprintf("127.0.0.1:%d", ports[0]),
		"--raft-addr", fmt.Sprintf("127.0.0.1:%d", ports[1]), "--gossip-addr", "192.0.2.7:7401", "--bootstrap-expect", "1",
		"--log-level", "error", "--insecure"}, nil)
	if err == nil || !strings.Contains(err.Error(), "192.0.2.7:7401 is not a loopback") {
		t.Fatalf("serve --insecure --gossip-addr 192.0.2.7:7401: %v; want a refusal naming the gossip address", err)
	}
}

// TestServeRefusesToStartWithoutTLS: TLS is the default; with neither the
// three --tls-* files nor --insecure, serve says what to pass and binds
// nothing.
func TestServeRefusesToStartWithoutTLS(t *testing.T) {
	ports, err := loopback.StablePorts(2)
	if err != nil {
		t.Fatal(err)
	}
	grpcAddr, raftAddr := fmt.Sprintf("127.0.0.1:%d", ports[0]), fmt.Sprintf("127.0.0.1:%d", ports[1])
	err = runServe(context.Background(), []string{"--id", "n1", "--data", t.TempDir(), "--grpc-addr", grpcAddr,
		"--raft-addr", raftAddr, "--peers", "n1=" + raftAddr, "--log-level", "error"}, nil)
	if err == nil || !strings.Contains(err.Error(), "pass --tls-ca, --tls-cert and --tls-key") || !strings.Contains(err.Error(), "--insecure") {
		t.Fatalf("serve without TLS flags: %v; want a refusal naming the flags and --insecure", err)
	}
	for _, addr := range []string{grpcAddr, raftAddr} {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			t.Errorf("%s is still bound after the refusal: %v", addr, err)
			continue
		}
		ln.Close()
	}
}

// TestCLIWithACertificateAgainstAPlainTextNode: the CLI with
// $LEASEHOLD_CA/_CERT/_KEY set, against a cluster started with --insecure,
// printed "tls: first record does not look like a TLS handshake" on every
// row and "no endpoint answered", and left the operator guessing. It must
// say to pass --insecure.
func TestCLIWithACertificateAgainstAPlainTextNode(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "tls")
	mustCerts(t, "ca", "--dir", dir)
	mustCerts(t, "operator", "--dir", dir, "op")
	_, addr := clustertest.Start(t)
	certs := []string{"--endpoints", addr, "--ca", dir + "/ca.pem", "--cert", dir + "/operator-op.pem", "--key", dir + "/operator-op-key.pem"}
	const hint = "if the node serves plain text (serve --insecure), pass --insecure"
	var out bytes.Buffer
	if err := runStatus(context.Background(), append(certs, "--timeout", "2s"), &out); err == nil || !strings.Contains(err.Error(), hint) {
		t.Errorf("status with a certificate against a plain-text node: %v; want %q\n%s", err, hint, out.String())
	}
	if err := runLimits(context.Background(), append([]string{"get"}, append(certs, "--timeout", "1s", "k")...), io.Discard); err == nil ||
		!strings.Contains(err.Error(), hint) {
		t.Errorf("limits get with a certificate against a plain-text node: %v; want %q", err, hint)
	}
	if err := runStatus(context.Background(), []string{"--endpoints", addr, "--insecure"}, io.Discard); err != nil {
		t.Errorf("status --insecure against the plain-text node: %v", err)
	}
}

// TestCLIWithoutALeaderSaysWhy: with too few voters up for a quorum, every
// write answered "no node acted as the leader: ...: context deadline
// exceeded" and nothing else. It must keep the nodes' reason and say what
// it means.
func TestCLIWithoutALeaderSaysWhy(t *testing.T) {
	ports, err := loopback.StablePorts(4)
	if err != nil {
		t.Fatal(err)
	}
	grpcAddr, raftAddr := fmt.Sprintf("127.0.0.1:%d", ports[0]), fmt.Sprintf("127.0.0.1:%d", ports[1])
	// n1 of three voters whose other two never start: no quorum.
	peers := fmt.Sprintf("n1=%s,n2=127.0.0.1:%d,n3=127.0.0.1:%d", raftAddr, ports[2], ports[3])
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() {
		served <- runServe(ctx, []string{"--id", "n1", "--data", filepath.Join(t.TempDir(), "n1"),
			"--grpc-addr", grpcAddr, "--raft-addr", raftAddr, "--peers", peers, "--log-level", "error", "--insecure",
			"--heartbeat-timeout", "50ms", "--election-timeout", "50ms", "--leader-lease-timeout", "50ms"}, nil)
	}()
	defer func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("serve: %v", err)
		}
	}()
	deadline := time.Now().Add(20 * time.Second)
	for runStatus(context.Background(), []string{"--endpoints", grpcAddr, "--insecure", "--timeout", "500ms"}, io.Discard) != nil {
		if time.Now().After(deadline) {
			t.Fatal("the node did not answer Status within 20s")
		}
		time.Sleep(50 * time.Millisecond) // polling a starting node, with a deadline
	}
	err = runLimits(context.Background(), []string{"set", "--endpoints", grpcAddr, "--insecure", "--timeout", "2s", "--limit", "5", "k"}, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "no leader is known") || !strings.Contains(err.Error(), "too few voters are up for a quorum") {
		t.Errorf("limits set without a quorum: %v; want the node's reason and a hint about the quorum", err)
	}
}
