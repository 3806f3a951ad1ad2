package client_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/leasehold/leasehold/client"
)

// A process shares a budget of 100 requests a second with every other
// process using the same key. The first requests are decided by the
// cluster, a round trip each; once the process uses the key often enough for
// a lease to pay, Allow and Wait spend leased tokens locally and the cluster
// is asked only to refresh the lease.
//
// (To run without a cluster, this example dials an in-process fake of the
// three nodes in plain text; against a real cluster, pass WithTLS in place
// of WithInsecure and WithDialOptions.)
func Example() {
	fake := startFake(3)
	defer fake.stop()
	ctx := context.Background()

	c, err := client.Dial(ctx, []string{"127.0.0.1:7101", "127.0.0.1:7102", "127.0.0.1:7103"},
		client.WithInsecure(), client.WithDialOptions(fake.dialer()))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	l := c.Limiter("tenant-42:gpt-4.1", client.Limit{Rate: 100, Per: time.Second, Burst: 100})
	admitted := 0
	for range 20 {
		if l.Allow() {
			admitted++ // call the model
		}
	}
	fmt.Println("admitted:", admitted)
	if err := l.Wait(ctx); err == nil {
		fmt.Println("one more: call the model")
	}
	fmt.Println("limiter:", l.State())
	// Output:
	// admitted: 20
	// one more: call the model
	// limiter: leased
}

// A key whose processes should keep going, at a fraction of the limit each,
// for a while when the cluster cannot be reached.
func ExampleFallbackShare() {
	fake := startFake(1)
	defer fake.stop()
	ctx := context.Background()

	c, err := client.Dial(ctx, []string{"127.0.0.1:7101"},
		client.WithInsecure(), client.WithDialOptions(fake.dialer()),
		// 8 processes share each key: each may admit 1/8 of its limit,
		// for at most 5 minutes, while the cluster is away.
		client.WithFailurePolicy(client.FallbackShare{Clients: 8, For: 5 * time.Minute}))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	l := c.Limiter("tenant-42:tokens", client.Limit{Rate: 40000, Per: time.Minute})
	if err := l.WaitN(ctx, 1200); err != nil { // the prompt's size in LLM tokens
		log.Fatal(err)
	}
	fmt.Println("admitted 1200 tokens")
	// Output:
	// admitted 1200 tokens
}
