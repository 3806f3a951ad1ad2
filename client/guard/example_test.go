package guard_test

import (
	"context"
	"fmt"
	"log"
	"net/http"
	"net/http/httptest"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/leasehold/leasehold/client/guard"
	"github.com/leasehold/leasehold/client/guard/guardtest"
	"github.com/leasehold/leasehold/internal/fakeprovider"
)

// openai-go's calls pay from a budget: reserved before they are sent,
// settled with the usage the provider reports when the reply has been read.
//
// (This example runs against the fake provider and an in-memory budget;
// in production the URL is the provider's and the budget a Leasehold
// client.Budget shared by every process.)
func Example() {
	fake, _ := fakeprovider.New(fakeprovider.DefaultConfig())
	provider := httptest.NewServer(fake)
	defer provider.Close()
	budget := guardtest.New(guardtest.Limits{})

	g, err := guard.New(guard.Config{
		Budget: func(c guard.Call) guard.Budget { return budget }, // one budget per model in practice
	})
	if err != nil {
		log.Fatal(err)
	}
	client := openai.NewClient(
		option.WithBaseURL(provider.URL+"/v1/"), option.WithAPIKey("sk-test"),
		option.WithHTTPClient(&http.Client{Transport: g}),
		option.WithMaxRetries(0), // the guard retries, honouring the provider's whole wait
	)

	resp, err := client.Chat.Completions.New(context.Background(), openai.ChatCompletionNewParams{
		Model:               "gpt-4.1",
		MaxCompletionTokens: openai.Int(200),
		Messages:            []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Say hello.")},
	})
	if err != nil {
		log.Fatal(err)
	}
	s := budget.Stats()
	fmt.Println("reserved:", s.Reserved, "settled:", s.Settled)
	fmt.Println("settled at the provider's usage:",
		s.Charged == guard.Cost{Requests: 1, InputTokens: resp.Usage.PromptTokens, OutputTokens: resp.Usage.CompletionTokens})
	// Output:
	// reserved: 1 settled: 1
	// settled at the provider's usage: true
}
