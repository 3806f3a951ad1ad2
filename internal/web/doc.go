// Package web is a node's HTTP face, on a listener of its own (serve
// --http-addr): Prometheus metrics (/metrics), health for load balancers
// and Kubernetes probes (/healthz, /readyz) and the web console (/, with
// its JSON under /api/).
//
// The console is served by every node from its own memory: the cluster's
// state as the node has applied it, the node's per-key activity (every node
// applies every command, so every node counts every key), and a small time
// series the node samples every second and keeps for SeriesLength, lost on
// restart. It is server-rendered HTML with a little plain JavaScript that
// polls the JSON and draws SVG charts; no build step, no framework. Its
// form sets and deletes limits with the API's own validation and messages.
//
// With TLS (Config.TLS) the listener serves the node's certificate and
// asks for a client certificate of the cluster's CA, which is optional at
// the handshake and checked per request:
//
//	/healthz, /readyz       anyone (probes present no certificate)
//	/metrics, console reads any certificate of the CA (client, operator, node)
//	console writes          operator or node
//
// Without TLS everyone may do everything, as on the gRPC API.
//
// Writes are made by the node, with its own identity, after the caller's
// role is checked. A follower cannot apply them: it forwards them to the
// leader's console when Config.Peers knows its address, and otherwise says
// which node leads.
//
// At most Config.MaxConns connections (64) are open at once, since probes
// need no certificate. At the cap a new connection closes the one idle
// longest: waiting for its next request, or for its first request's
// headers, or, after its handler, for a body the server reads to discard.
// A connection whose handler is running is never closed for another. So
// slow connections (idle keep-alives, a slowloris, a body never sent),
// renewed, displace each other and not a probe: to close a probe before
// its request is served, MaxConns connections must arrive in the
// milliseconds it takes to send it.
//
// It imports cluster, transport and internal/pki, connlimit and ratelog;
// cluster knows nothing of it. Every goroutine it starts ends with Close.
package web
