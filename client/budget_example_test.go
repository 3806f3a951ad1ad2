package client_test

import (
	"context"
	"fmt"
	"log"
	"net/http"
	"net/http/httptest"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/leasehold/leasehold/client"
	"github.com/leasehold/leasehold/client/guard"
	"github.com/leasehold/leasehold/internal/fakeprovider"
)

// A Budget takes a call's estimate from every rule before the call, or from
// none, and settles with what the provider reports: below the estimate the
// difference goes back, above it is charged as debt.
//
// (To run without a cluster, this example dials an in-process fake; against
// a real cluster, pass WithTLS in place of WithInsecure and WithDialOptions.)
func ExampleBudget() {
	fake := startFake(1)
	defer fake.stop()
	ctx := context.Background()
	c, err := client.Dial(ctx, []string{"127.0.0.1:7101"}, client.WithInsecure(), client.WithDialOptions(fake.dialer()))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	b := c.Budget("openai:org-7:gpt-4.1",
		client.Rule{Counts: client.Requests, Limit: client.Limit{Rate: 500, Per: time.Minute}},
		client.Rule{Counts: client.InputTokens, Limit: client.Limit{Rate: 200_000, Per: time.Minute}},
		client.Rule{Counts: client.OutputTokens, Limit: client.Limit{Rate: 50_000, Per: time.Minute}},
		client.Rule{Counts: client.InFlight, Limit: client.Limit{Rate: 20}},
		client.Rule{Counts: client.Spend, Limit: client.Limit{Rate: 50_000_000, Per: 24 * time.Hour}, // micro-USD
			Price: client.Price{InputPerMillion: 2_000_000, OutputPerMillion: 8_000_000}}, // $2 and $8 per million
	)
	r, err := b.Reserve(ctx, client.Cost{Requests: 1, InputTokens: 1200, OutputTokens: 1000})
	if err != nil {
		log.Fatal(err) // a *client.RuleError says which rule, and when it would fit
	}
	// ... call the provider ...
	if err := r.Settle(ctx, client.Cost{Requests: 1, InputTokens: 1187, OutputTokens: 342}); err != nil {
		log.Fatal(err)
	}
	// or r.Cancel() if nothing was sent
	fmt.Println("keys:", b.Keys())
	// Output:
	// keys: [openai:org-7:gpt-4.1/requests openai:org-7:gpt-4.1/input-tokens openai:org-7:gpt-4.1/output-tokens openai:org-7:gpt-4.1/in-flight openai:org-7:gpt-4.1/spend]
}

// The outbound guard makes openai-go's calls pay from a Budget per model,
// shared with every process that uses the same scope: reserved before a
// call is sent, settled from the usage in the response when its body has
// been read, and a provider's 429 blocks the Budget everywhere.
//
// (This example runs against an in-process fake cluster and a fake
// provider; in production the endpoints are the cluster's, with WithTLS,
// and the URL is the provider's.)
func ExampleBudget_guard() {
	fake := startFake(1)
	defer fake.stop()
	p, _ := fakeprovider.New(fakeprovider.DefaultConfig())
	provider := httptest.NewServer(p)
	defer provider.Close()
	ctx := context.Background()

	c, err := client.Dial(ctx, []string{"127.0.0.1:7101"}, client.WithInsecure(), client.WithDialOptions(fake.dialer()))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	g, err := guard.New(guard.Config{
		Budget: guard.ForBudgets(func(call guard.Call) *client.Budget {
			return c.Budget("openai:org-7:"+call.Model,
				client.Rule{Counts: client.Requests, Limit: client.Limit{Rate: 500, Per: time.Minute}},
				client.Rule{Counts: client.Tokens, Limit: client.Limit{Rate: 200_000, Per: time.Minute}},
				client.Rule{Counts: client.InFlight, Limit: client.Limit{Rate: 20}},
			)
		}),
	})
	if err != nil {
		log.Fatal(err)
	}
	ai := openai.NewClient(
		option.WithBaseURL(provider.URL+"/v1/"), option.WithAPIKey("sk-test"),
		option.WithHTTPClient(&http.Client{Transport: g}),
		option.WithMaxRetries(0), // the guard retries, honouring the provider's whole wait
	)
	resp, err := ai.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{
		Model:               "gpt-4.1",
		MaxCompletionTokens: openai.Int(200),
		Messages:            []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Say hello.")},
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("answered:", resp.Choices[0].Message.Content != "")
	// Output:
	// answered: true
}
