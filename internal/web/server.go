package web

import (
	"context"
	"crypto/tls"
	"embed"
	"errors"
	"fmt"
	"html/template"
	"log"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/leasehold/leasehold/cluster"
	"github.com/leasehold/leasehold/internal/connlimit"
	"github.com/leasehold/leasehold/internal/pki"
	"github.com/leasehold/leasehold/internal/ratelog"
	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

// Node is what the server needs of a node; *cluster.Node implements it.
type Node interface {
	ID() string
	Health() cluster.Health
	Status(ctx context.Context, req *pb.StatusRequest) (*pb.StatusResponse, error)
	Activity(limit int, substr string) cluster.Activity
	KeyStates(keys []string) []cluster.KeyState
	SetLimit(ctx context.Context, req *pb.SetLimitRequest) (*pb.SetLimitResponse, error)
	DeleteLimit(ctx context.Context, req *pb.DeleteLimitRequest) (*pb.DeleteLimitResponse, error)
}

// Peers tells the console where the other nodes' HTTP listeners are, by
// node id: "host:port". serve fills it from --console-peers
// (StaticPeers), else, with membership on, from gossip (MemberPeers). A nil
// Peers knows none.
type Peers interface {
	HTTPAddr(id string) (addr string, ok bool)
}

// StaticPeers is a fixed Peers.
type StaticPeers map[string]string

// HTTPAddr returns the address of id, if listed.
func (p StaticPeers) HTTPAddr(id string) (string, bool) {
	a, ok := p[id]
	return a, ok
}

// MemberPeers finds the other nodes' HTTP listeners in gossip: the address
// each member advertises (serve --http-addr with --gossip-addr), as
// (*cluster.Node).Member reports it. It follows membership as it changes:
// a node that joins later is found without restarting the others.
type MemberPeers func(id string) (cluster.MemberInfo, bool)

// HTTPAddr returns the HTTP address member id gossips; ok is false when
// gossip does not know id or id serves no HTTP.
func (p MemberPeers) HTTPAddr(id string) (string, bool) {
	m, ok := p(id)
	if !ok || m.HTTPAddr == "" {
		return "", false
	}
	return m.HTTPAddr, true
}

// Config configures a Server. Node is required; the rest have defaults.
type Config struct {
	// Node is the node served.
	Node Node
	// Gatherer is where /metrics reads from: the registry the node's
	// metrics are in. nil serves an empty /metrics.
	Gatherer prometheus.Gatherer
	// TLS, if set, serves HTTPS with the node's certificate and checks
	// callers' certificates (see the package doc). nil serves plain HTTP
	// and lets everyone do everything.
	TLS *pki.Source
	// Peers are the other nodes' HTTP addresses: the console shows their
	// health, and forwards writes to the leader. nil: none known.
	Peers Peers
	// Logger receives the server's logs. Default slog.Default().
	Logger *slog.Logger
	// SampleInterval is how often the console's time series is sampled.
	// Default 1s.
	SampleInterval time.Duration
	// SeriesLength is how many samples each series keeps: with the
	// defaults, 5 minutes. Default 300.
	SeriesLength int
	// MaxConns is the most HTTP connections open at once. At the cap a
	// new connection closes the one idle longest (waiting for its next
	// request, or for its first request's headers), never one whose
	// request is being served; with every one serving, the new one is
	// closed. Either is logged, rate-limited. Probes need no certificate,
	// so the bound is what keeps anyone who reaches the port from taking
	// the process's file descriptors, and displacing is what keeps them
	// from taking the probes' slots (see the package doc). Default 64
	// (probes, Prometheus and a few browsers, each of which opens up to 6).
	MaxConns int
}

// Defaults of the Config fields.
const (
	DefaultSampleInterval = time.Second
	DefaultSeriesLength   = 300
	DefaultMaxConns       = 64
	// peerTimeout bounds one call to another node's console.
	peerTimeout = 2 * time.Second
)

// Validate reports every problem with c at once.
func (c Config) Validate() error {
	var errs []error
	if c.Node == nil {
		errs = append(errs, errors.New("web config: Node is nil"))
	}
	if c.SampleInterval < 0 {
		errs = append(errs, fmt.Errorf("web config: SampleInterval %v is negative (0 means %v)", c.SampleInterval, DefaultSampleInterval))
	}
	if c.SeriesLength < 0 {
		errs = append(errs, fmt.Errorf("web config: SeriesLength %d is negative (0 means %d)", c.SeriesLength, DefaultSeriesLength))
	}
	if c.MaxConns < 0 {
		errs = append(errs, fmt.Errorf("web config: MaxConns %d is negative (0 means %d)", c.MaxConns, DefaultMaxConns))
	}
	return errors.Join(errs...)
}

//go:embed assets
var assets embed.FS

var pageTemplate = template.Must(template.New("index.html").Funcs(template.FuncMap{
	"rate":            fmtRate,
	"algorithmsUsing": algorithmsUsing,
}).ParseFS(assets, "assets/index.html"))

// Server is a node's HTTP server. Serve it on a listener; Close stops it
// and its sampler. It is safe for concurrent use.
type Server struct {
	cfg     Config
	log     *slog.Logger
	series  *seriesStore
	keys    keysCache
	handler http.Handler
	client  *http.Client // to other nodes' consoles

	srv       *http.Server
	conns     *connlimit.Limit // MaxConns
	stop      chan struct{}
	wg        sync.WaitGroup
	closeOnce sync.Once
}

// New returns a Server for cfg and starts its sampler.
func New(cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.SampleInterval == 0 {
		cfg.SampleInterval = DefaultSampleInterval
	}
	if cfg.SeriesLength == 0 {
		cfg.SeriesLength = DefaultSeriesLength
	}
	if cfg.MaxConns == 0 {
		cfg.MaxConns = DefaultMaxConns
	}
	s := &Server{
		cfg:    cfg,
		log:    cfg.Logger,
		series: newSeriesStore(cfg.SeriesLength, cfg.SampleInterval),
		stop:   make(chan struct{}),
	}
	tr := &http.Transport{MaxIdleConnsPerHost: 2, IdleConnTimeout: time.Minute}
	if cfg.TLS != nil {
		tr.TLSClientConfig = cfg.TLS.ClientConfig(true, pki.RequireRole(pki.RoleNode))
	}
	s.client = &http.Client{Transport: tr, Timeout: peerTimeout}
	s.handler = s.routes()
	s.conns = connlimit.NewDisplacing(cfg.MaxConns, s.log, "http: connection limit reached")
	s.srv = &http.Server{
		Handler:           s.markBusy(s.handler),
		ConnContext:       func(ctx context.Context, c net.Conn) context.Context { return context.WithValue(ctx, connKey{}, c) },
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          errorLog(cfg.Logger),
	}
	if cfg.TLS != nil {
		s.srv.TLSConfig = cfg.TLS.OptionalClientConfig()
	}
	s.sample() // the first sample now, so the first page has totals
	s.wg.Add(1)
	go s.sampleLoop()
	return s, nil
}

// errorLog returns the http.Server's ErrorLog: each line logged at Warn,
// at most 5 at once, then one a second, each counting the ones left out
// (internal/ratelog). net/http logs a line for every failed TLS handshake,
// and anyone who reaches the port can fail handshakes: 3000 connections
// in 0.76 s wrote 3005 lines.
func errorLog(l *slog.Logger) *log.Logger {
	return log.New(&rateLimitedWriter{log: l, rl: ratelog.New(time.Second, 5)}, "", 0)
}

// rateLimitedWriter logs each line written to it at Warn through rl.
type rateLimitedWriter struct {
	log *slog.Logger
	rl  *ratelog.Limiter
}

func (w *rateLimitedWriter) Write(p []byte) (int, error) {
	w.rl.Log(w.log, slog.LevelWarn, strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// Handler returns the server's routes, for tests that serve them another way.
func (s *Server) Handler() http.Handler { return s.handler }

// Scheme returns "https" with TLS and "http" without.
func (s *Server) Scheme() string {
	if s.cfg.TLS != nil {
		return "https"
	}
	return "http"
}

// Serve serves on ln until Close, at most Config.MaxConns connections at
// once; it returns http.ErrServerClosed then.
func (s *Server) Serve(ln net.Listener) error {
	// /healthz and /readyz need no certificate: without a cap anyone who
	// reaches the port could hold connections until the process ran out of
	// file descriptors, and with it its client API, Raft, gossip and disk
	// check (TestHTTPConnectionsAreCapped); with a cap that sheds new
	// connections, MaxConns slow ones kept the probes out
	// (TestSlowConnectionsDoNotStarveProbes).
	ln = s.conns.Listener(ln)
	if s.cfg.TLS != nil {
		ln = tls.NewListener(ln, s.srv.TLSConfig)
	}
	return s.srv.Serve(ln)
}

// connKey is the request context's key to the connection it came on.
type connKey struct{}

// markBusy wraps h so that a connection is busy, for the connection cap,
// while h serves a request of it: never closed for a new connection then.
// Only the handler's run counts: reading a request's headers, discarding
// a body the handler left unread and idling between requests do not, so a
// client that trickles its headers or a body cannot hold a slot that a
// probe cannot take.
func (s *Server) markBusy(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if c, ok := r.Context().Value(connKey{}).(net.Conn); ok {
			defer s.conns.Busy(c)()
		}
		h.ServeHTTP(w, r)
	})
}

// Close stops serving (waiting for requests in progress until ctx ends)
// and stops the sampler.
func (s *Server) Close(ctx context.Context) error {
	var err error
	s.closeOnce.Do(func() {
		close(s.stop)
		err = s.srv.Shutdown(ctx)
		s.wg.Wait()
		s.client.CloseIdleConnections()
	})
	return err
}

func (s *Server) sampleLoop() {
	defer s.wg.Done()
	t := time.NewTicker(s.cfg.SampleInterval)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			s.sample()
		}
	}
}

// sample takes one sample of the node's activity.
func (s *Server) sample() {
	s.series.add(time.Now(), s.cfg.Node.Activity(trackedForSeries, ""))
}

// routes returns the server's handler.
func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", s.healthz)
	mux.HandleFunc("GET /readyz", s.readyz)
	metrics := promhttp.HandlerFor(s.gatherer(), promhttp.HandlerOpts{ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelWarn)})
	mux.Handle("GET /metrics", s.need(roleReader, metrics))
	mux.Handle("GET /{$}", s.need(roleReader, http.HandlerFunc(s.page)))
	mux.Handle("GET /static/", s.need(roleReader, http.StripPrefix("/static", http.FileServerFS(staticFS()))))
	mux.Handle("GET /api/node", s.need(roleReader, http.HandlerFunc(s.apiNode)))
	mux.Handle("GET /api/cluster", s.need(roleReader, http.HandlerFunc(s.apiCluster)))
	mux.Handle("GET /api/keys", s.need(roleReader, http.HandlerFunc(s.apiKeys)))
	mux.Handle("POST /limits", s.need(roleWriter, http.HandlerFunc(s.formLimit)))
	mux.Handle("POST /api/limits", s.need(roleWriter, http.HandlerFunc(s.apiLimit)))
	// A form post from another site could otherwise act with a browser's
	// certificate: refuse cross-origin writes.
	return http.NewCrossOriginProtection().Handler(mux)
}

func (s *Server) gatherer() prometheus.Gatherer {
	if s.cfg.Gatherer == nil {
		return prometheus.NewRegistry()
	}
	return s.cfg.Gatherer
}

// healthz answers 200 while the process serves.
func (s *Server) healthz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprintln(w, "ok")
}

// readyz answers 200 "ready" when the node is ready (cluster.Health.Ready),
// else 503 with one reason per line.
func (s *Server) readyz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	h := s.cfg.Node.Health()
	if len(h.Problems) == 0 {
		fmt.Fprintln(w, "ready")
		return
	}
	w.WriteHeader(http.StatusServiceUnavailable)
	fmt.Fprintf(w, "not ready: %s\n", strings.Join(h.Problems, "\n"))
}

// access is what a request may do.
type access int

const (
	roleReader access = iota + 1 // read metrics and the console
	roleWriter                   // change limits
)

// caller returns who made r: its certificate's identity, or ok false if
// it presented none. Without TLS everyone is an operator.
func (s *Server) caller(r *http.Request) (id pki.Identity, insecure, ok bool) {
	if s.cfg.TLS == nil {
		return pki.Identity{Role: pki.RoleOperator, Name: "anyone"}, true, true
	}
	if r.TLS == nil {
		return pki.Identity{}, false, false
	}
	id, err := pki.PeerIdentity(*r.TLS)
	return id, false, err == nil
}

// need wraps h so that it serves only callers allowed a.
func (s *Server) need(a access, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, _, ok := s.caller(r)
		switch {
		case !ok:
			http.Error(w, "a client certificate of the cluster's CA is needed here "+
				"(leasehold certs client NAME: any role may scrape /metrics and view the console, an operator's may change limits; "+
				"see the README, \"Monitoring\" and \"Console\")",
				http.StatusUnauthorized)
			return
		case a == roleWriter && id.Role != pki.RoleOperator && id.Role != pki.RoleNode:
			http.Error(w, fmt.Sprintf("permission denied: %s may not change limits, which needs the operator role", id),
				http.StatusForbidden)
			return
		}
		h.ServeHTTP(w, r)
	})
}
