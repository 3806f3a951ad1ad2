package client_test

import (
	"context"
	"fmt"
	"log"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/leasehold/leasehold/client"
	"github.com/leasehold/leasehold/client/promcollector"
)

// A service shows what its limiters do next to its own metrics: it
// registers the SDK's collector with its registry. The collector reads
// Client.Stats at each scrape; Allow pays nothing for it.
//
// (To run without a cluster, this example dials an in-process fake.)
func Example_prometheus() {
	fake := startFake(1)
	defer fake.stop()
	c, err := client.Dial(context.Background(), []string{"127.0.0.1:7101"}, client.WithInsecure(), client.WithDialOptions(fake.dialer()))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	col, err := promcollector.New(c, promcollector.Config{
		// Series of their own for a few keys you choose (never every key).
		Keys:        []string{"tenant-42:gpt-4.1"},
		ConstLabels: prometheus.Labels{"service": "chat-api"},
	})
	if err != nil {
		log.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(col)
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))

	l := c.Limiter("tenant-42:gpt-4.1", client.Limit{Rate: 100, Per: time.Second})
	for range 20 {
		l.Allow()
	}
	s := c.Stats()
	fmt.Println("admitted tokens:", s.Admitted.Leased+s.Admitted.Central)
	mfs, err := reg.Gather()
	if err != nil {
		log.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "leasehold_client_admitted_tokens_total" {
			sum := 0.0
			for _, m := range mf.GetMetric() {
				sum += m.GetCounter().GetValue()
			}
			fmt.Println("leasehold_client_admitted_tokens_total, all sources:", sum)
		}
	}
	// Output:
	// admitted tokens: 20
	// leasehold_client_admitted_tokens_total, all sources: 20
}
