package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/leasehold/leasehold/internal/pki"
	"github.com/leasehold/leasehold/internal/proc"
)

// runCluster starts N `leasehold serve` children on loopback, waits for a
// leader, prints the endpoints and the certificate to use them with, and
// keeps the nodes running until it is told to stop (Ctrl-C, SIGTERM or
// SIGHUP), then stops them by PID. A node that exits meanwhile is reported
// on stderr and the others keep running; restartSignal (SIGUSR1) restarts
// every node that is down. Started again with the same --dir, the nodes
// resume the same cluster.
//
// The nodes serve mutual TLS unless --insecure. On first run it makes a CA
// and node, operator and client certificates in <dir>/tls (as `leasehold
// certs` would); later runs use what is there and never issue a
// certificate whose files exist, so a rotated one stays.
//
// --client-inline-limits is passed to every node's serve, and so are the
// serve flags after "--" (those cluster sets itself excepted).
func runCluster(ctx context.Context, args []string, stdout io.Writer) error {
	layout, wait, err := clusterLayout(args, stdout)
	if err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find own binary: %w", err)
	}
	// Listen for the restart signal before any node runs: by default it
	// would end this process.
	restart := make(chan os.Signal, 1)
	if restartSignal != nil {
		signal.Notify(restart, restartSignal)
		defer signal.Stop(restart)
	}

	certs, err := clusterCerts(layout)
	if err != nil {
		return err
	}
	specs, err := layout.Specs()
	if err != nil {
		return err
	}
	// Deaths the runner did not cause, reported by the loop below; before
	// a leader is up, WaitLeader reports one as its error.
	deaths := make(chan proc.Exit, 64)
	for i := range specs {
		specs[i].OnExit = func(e proc.Exit) {
			if !e.Expected {
				select {
				case deaths <- e:
				default: // 64 unreported deaths: the loop is not running
				}
			}
		}
	}
	c, err := proc.NewCluster(proc.ClusterConfig{Binary: self, Nodes: specs, Certs: certs, Insecure: layout.Insecure})
	if err != nil {
		return err
	}
	defer c.Close()
	defer func() {
		if err := c.StopAll(20 * time.Second); err != nil {
			fmt.Fprintln(os.Stderr, err)
		}
	}()
	for _, n := range c.Nodes() {
		if err := n.Start(); err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "started %s pid %d: client %s, raft %s, http %s, gossip %s, data %s\n", n.ID(), n.PID(), n.ClientAddr(),
			n.RaftAddr(), n.HTTPAddr(), n.Spec().GossipAddr, n.Spec().Data)
	}
	wctx, cancel := context.WithTimeout(ctx, wait)
	leader, err := c.WaitLeader(wctx)
	cancel()
	if err != nil {
		var exit *proc.ExitError
		if errors.As(err, &exit) {
			err = fmt.Errorf("%w%s", err, logEnds(exit.Exit))
		}
		return err
	}
	fmt.Fprintf(os.Stderr, "leader: %s\n", leader.ID())
	fmt.Fprintf(stdout, "endpoints: %s\n", strings.Join(c.Endpoints(), ","))
	if err := printTLS(stdout, certs); err != nil {
		return err
	}
	scheme := "https"
	if layout.Insecure {
		scheme = "http"
	}
	printHTTP(stdout, c, leader, scheme)
	printGossip(stdout, os.Stderr, specs)
	fmt.Fprintf(os.Stderr, "leasehold cluster pid %d: a node that exits is reported here and the others keep running%s; Ctrl-C stops them all\n",
		os.Getpid(), restartHint())

	for {
		select {
		case <-ctx.Done():
			fmt.Fprintln(os.Stderr, "stopping the nodes")
			return nil
		case e := <-deaths:
			fmt.Fprintf(os.Stderr, "%s; the other nodes keep running%s%s\n", e, restartHint(), logEnds(e))
		case <-restart:
			restartDown(c)
		}
	}
}

// logEnds returns "\n<log> ends: <its last line>" for a node that exited
// with a non-zero status, so that the reason (a flag serve refused, a port in use,
// a data directory it will not start on) is on the terminal, not only in
// the log; "" if there is no such line.
func logEnds(e proc.Exit) string {
	// Only a node that exited by itself with a status said why last; a
	// signal (kill -9) leaves whatever it was logging.
	var status *exec.ExitError
	if !errors.As(e.Err, &status) || !status.Exited() || e.Log == "" {
		return ""
	}
	f, err := os.Open(e.Log)
	if err != nil {
		return ""
	}
	defer f.Close()
	const tail = 4096
	if st, err := f.Stat(); err == nil && st.Size() > tail {
		if _, err := f.Seek(st.Size()-tail, io.SeekStart); err != nil {
			return ""
		}
	}
	b, err := io.ReadAll(f)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	last := strings.TrimSpace(lines[len(lines)-1])
	if last == "" || strings.HasPrefix(last, "--- ") {
		// proc's own line after the node's output ("--- n1 (pid ...) exited").
		for i := len(lines) - 2; i >= 0; i-- {
			if l := strings.TrimSpace(lines[i]); l != "" && !strings.HasPrefix(l, "--- ") {
				last = l
				break
			}
		}
	}
	if last == "" || strings.HasPrefix(last, "--- ") {
		return ""
	}
	return fmt.Sprintf("\n%s ends: %s", e.Log, last)
}

// clusterLayout parses runCluster's flags into its nodes' layout and how
// long to wait for a leader. The nodes gossip and bootstrap with
// --bootstrap-expect, as a real cluster would; more join with serve --join
// (README, "Operating a cluster"). Each serves metrics and the console over
// HTTP; the consoles find each other in gossip. Every node gets
// --client-inline-limits and the serve flags after "--"; one that cluster
// sets itself (its id, data, addresses, peers, TLS files) is an error, not
// an override.
func clusterLayout(args []string, stdout io.Writer) (proc.Layout, time.Duration, error) {
	fs := flag.NewFlagSet("cluster", flag.ContinueOnError)
	nodes := fs.Int("nodes", 3, "number of nodes, 1 to 9")
	dir := fs.String("dir", "./data", "parent of the nodes' data directories (n1, n2, ...) and logs")
	base := fs.Int("base-port", 7100, "node i serves clients on base+i, Raft on base+100+i, HTTP (metrics, console) on base+200+i "+
		"and gossip on base+300+i")
	host := fs.String("host", "127.0.0.1", "loopback address to listen on")
	wait := fs.Duration("wait", 30*time.Second, "how long to wait for a leader")
	logLevel := fs.String("log-level", "info", "the nodes' log level")
	insecure := fs.Bool("insecure", false, "serve plain text, no certificates: anyone who reaches the ports can change limits (local play only)")
	inlineLimits := addInlineLimitsFlag(fs)
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: leasehold cluster [flags] [-- serve flags for every node, e.g. --max-in-flight 512]")
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args, stdout); err != nil {
		return proc.Layout{}, 0, err
	}
	if *nodes < 1 || *nodes > 9 {
		return proc.Layout{}, 0, fmt.Errorf("--nodes %d: want 1 to 9", *nodes)
	}
	if *base < 1024 || *base+300+*nodes > 65535 {
		return proc.Layout{}, 0, fmt.Errorf("--base-port %d: want 1024 to %d", *base, 65535-300-*nodes)
	}
	// Flag parsing stops at "--", or at the first argument that is not a
	// flag, which would otherwise be dropped without a word.
	serveArgs := fs.Args()
	if len(serveArgs) > 0 && (len(args) < len(serveArgs)+1 || args[len(args)-len(serveArgs)-1] != "--") {
		return proc.Layout{}, 0, fmt.Errorf("unexpected arguments %q (serve flags for the nodes go after --)", serveArgs)
	}
	layout := proc.Layout{Nodes: *nodes, Dir: *dir, Host: *host, BasePort: *base, LogLevel: *logLevel, Insecure: *insecure,
		Gossip: true, HTTP: true}
	if !*insecure {
		layout.TLSDir = filepath.Join(*dir, "tls")
	}
	extra := append([]string{fmt.Sprintf("--client-inline-limits=%t", *inlineLimits)}, serveArgs...)
	layout.ExtraArgs = func(proc.NodeSpec) []string { return slices.Clone(extra) }
	if err := ownFlags(layout, serveArgs); err != nil {
		return proc.Layout{}, 0, err
	}
	return layout, *wait, nil
}

// ownFlags returns an error naming the flags of args that the command line
// of layout's nodes sets already (their ExtraArgs aside), TLS files, the
// gossip key and --insecure included; that is --client-inline-limits,
// which cluster has a flag for; or that says what cluster decides for each
// node: where the addresses it sets are reached, and the peers, which its
// gossip bootstrap excludes; or that only one node may ask (--non-voter,
// --replace).
func ownFlags(layout proc.Layout, args []string) error {
	// Laid out insecure, so that no certificate is made yet
	// (clusterCerts says whether it made them).
	layout.Insecure, layout.TLSDir = true, ""
	specs, err := layout.Specs()
	if err != nil {
		return err
	}
	// The gossip key file too, which only a secure layout names. One
	// --grpc-advertise or --gossip-advertise for every node would send
	// every redirect or gossip message to the same node.
	set := map[string]bool{"client-inline-limits": true, "gossip-key-file": true,
		"grpc-advertise": true, "gossip-advertise": true, "peers": true}
	args0 := specs[0].Args()
	own := slices.Concat(args0[:len(args0)-len(specs[0].ExtraArgs)], proc.TLSFiles{}.ServeArgs())
	for _, a := range own {
		if name, ok := flagName(a); ok {
			set[name] = true
		}
	}
	// What one node may ask and every node may not: a cluster whose every
	// node is a non-voter, or a replacement (which never bootstraps),
	// never elects a leader.
	oneNode := map[string]bool{"non-voter": true, "replace": true}
	var dup, single []string
	for _, a := range args {
		name, ok := flagName(a)
		switch {
		case !ok:
		case set[name]:
			dup = append(dup, "--"+name)
		case oneNode[name] && !strings.HasSuffix(a, "=false"):
			single = append(single, "--"+name)
		}
	}
	if len(dup) > 0 {
		return fmt.Errorf("serve flags after --: %s set by cluster itself (use its own flags)", strings.Join(dup, ", "))
	}
	if len(single) > 0 {
		return fmt.Errorf("serve flags after --: %s would apply to every node, and a cluster of them never elects a leader; "+
			"start such a node with `leasehold serve` (README, \"Add a node\")", strings.Join(single, ", "))
	}
	return nil
}

// flagName returns the name of a flag argument ("-x", "--x", "--x=v").
func flagName(arg string) (string, bool) {
	if len(arg) < 2 || arg[0] != '-' || arg == "--" {
		return "", false
	}
	name := strings.TrimLeft(arg, "-")
	name, _, _ = strings.Cut(name, "=")
	return name, name != ""
}

// restartHint tells how to restart the nodes that are down.
func restartHint() string {
	if restartSignal == nil {
		return ""
	}
	return fmt.Sprintf("; `kill -%s %d` restarts the nodes that are down", restartSignalName, os.Getpid())
}

// restartDown starts every node of c that is not running, with the flags
// it had, and says so on stderr.
func restartDown(c *proc.Cluster) {
	var down int
	for _, n := range c.Nodes() {
		if n.Running() {
			continue
		}
		down++
		if err := n.Start(); err != nil {
			fmt.Fprintf(os.Stderr, "restart %s: %v\n", n.ID(), err)
			continue
		}
		fmt.Fprintf(os.Stderr, "restarted %s pid %d\n", n.ID(), n.PID())
	}
	if down == 0 {
		fmt.Fprintln(os.Stderr, "restart: every node is running")
	}
}

// clusterClient is the client certificate `leasehold cluster` makes for SDK
// examples, next to the operator's (proc.AdminName).
const clusterClient = "app"

// clusterCerts returns layout's certificates, nil if insecure: the CA, and
// the operator's and a client's certificates (the nodes' come with the
// specs), made on first run, and says on stderr what it made or found.
func clusterCerts(layout proc.Layout) (*proc.Certs, error) {
	if layout.Insecure {
		fmt.Fprintln(os.Stderr, "INSECURE: the nodes serve plain text (--insecure); the CLI needs --insecure too")
		return nil, nil
	}
	caFile, _ := pki.CAFiles(layout.TLSDir)
	_, err := os.Stat(caFile)
	fresh := errors.Is(err, os.ErrNotExist)
	certs, err := layout.Certs()
	if err != nil {
		return nil, err
	}
	if _, err := certs.Operator(proc.AdminName); err != nil {
		return nil, err
	}
	if _, err := certs.Client(clusterClient); err != nil {
		return nil, err
	}
	verb := "using the"
	if fresh {
		verb = "made a CA and"
	}
	fmt.Fprintf(os.Stderr, "%s certificates in %s: nodes n1..n%d, operator %s, client %s\n", verb, certs.Dir(), layout.Nodes,
		proc.AdminName, clusterClient)
	return certs, nil
}

// printTLS prints the "tls:" line (the CA and the operator's certificate
// and key) and, on stderr, how to use them; nothing for a cluster in plain
// text.
func printTLS(stdout io.Writer, certs *proc.Certs) error {
	if certs == nil {
		return nil
	}
	op, err := certs.Operator(proc.AdminName)
	if err != nil {
		return err
	}
	app, err := certs.Client(clusterClient)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "tls: ca=%s cert=%s key=%s\n", op.CA, op.Cert, op.Key)
	fmt.Fprintf(os.Stderr, "for the CLI: export %s=%s %s=%s %s=%s\n", envCA, op.CA, envCert, op.Cert, envKey, op.Key)
	fmt.Fprintf(os.Stderr, "for the SDK: client.WithTLS(%q, %q, %q)\n", app.Cert, app.Key, app.CA)
	return nil
}
