package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/leasehold/leasehold/internal/proc"
)

// printHTTP prints the nodes' metrics URLs and the leader's console URL,
// one line each:
//
//	metrics: http://127.0.0.1:7301/metrics,http://127.0.0.1:7302/metrics,...
//	console: http://127.0.0.1:7301/
//
// scheme is https when the nodes serve TLS.
func printHTTP(w io.Writer, c *proc.Cluster, leader *proc.Node, scheme string) {
	var metrics []string
	for _, n := range c.Nodes() {
		if n.HTTPAddr() != "" {
			metrics = append(metrics, scheme+"://"+n.HTTPAddr()+"/metrics")
		}
	}
	if len(metrics) == 0 {
		return
	}
	fmt.Fprintf(w, "metrics: %s\n", strings.Join(metrics, ","))
	if leader != nil && leader.HTTPAddr() != "" {
		fmt.Fprintf(w, "console: %s://%s/\n", scheme, leader.HTTPAddr())
	}
}
