package client_test

import (
	"context"
	"log"
	"time"

	"github.com/leasehold/leasehold/client"
)

// A cluster serving TLS wants a certificate: here the client certificate
// `leasehold certs client --dir data/tls app` wrote. Compiled, not run: it
// needs a cluster.
func ExampleWithTLS() {
	ctx := context.Background()
	c, err := client.Dial(ctx, []string{"127.0.0.1:7101", "127.0.0.1:7102", "127.0.0.1:7103"},
		client.WithTLS("data/tls/client-app.pem", "data/tls/client-app-key.pem", "data/tls/ca.pem"))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	l := c.Limiter("tenant-42:gpt-4.1", client.Limit{Rate: 100, Per: time.Second, Burst: 100})
	if err := l.Wait(ctx); err != nil {
		log.Fatal(err) // transport.ErrPermissionDenied if the certificate may not acquire
	}
}
