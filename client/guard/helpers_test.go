package guard_test

import (
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/anthropics/anthropic-sdk-go/v2"
	aoption "github.com/anthropics/anthropic-sdk-go/v2/option"
	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/leasehold/leasehold/client/guard"
	"github.com/leasehold/leasehold/client/guard/guardtest"
	"github.com/leasehold/leasehold/internal/fakeprovider"
)

const (
	gptModel    = "gpt-4.1"
	claudeModel = "claude-sonnet-4-5"
	prompt      = "Write a haiku about token buckets and the raft log."
)

// newFake returns a fake provider with cfg's changes to DefaultConfig.
func newFake(t testing.TB, change func(*fakeprovider.Config)) *fakeprovider.Provider {
	t.Helper()
	cfg := fakeprovider.DefaultConfig()
	if change != nil {
		change(&cfg)
	}
	p, err := fakeprovider.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// serve starts p on a loopback httptest server and returns its URL.
func serve(t testing.TB, h http.Handler) string {
	t.Helper()
	s := httptest.NewServer(h)
	t.Cleanup(s.Close)
	return s.URL
}

// newGuard returns a guard over transport paying every call from budget
// (nil: unguarded), with change applied to its config.
func newGuard(t testing.TB, transport http.RoundTripper, budget guard.Budget, change func(*guard.Config)) *guard.Guard {
	t.Helper()
	cfg := guard.DefaultConfig()
	cfg.Transport = transport
	cfg.Budget = func(guard.Call) guard.Budget { return budget }
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	if change != nil {
		change(&cfg)
	}
	g, err := guard.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return g
}

// openAI returns an openai-go client sending through rt to base, with its
// own retries off (see the package doc).
func openAI(rt http.RoundTripper, base string, opts ...option.RequestOption) *openai.Client {
	c := openai.NewClient(append([]option.RequestOption{
		option.WithBaseURL(base + "/v1/"), option.WithAPIKey("test"),
		option.WithHTTPClient(&http.Client{Transport: rt}), option.WithMaxRetries(0),
	}, opts...)...)
	return &c
}

// claude returns an anthropic-sdk-go client sending through rt to base.
func claude(rt http.RoundTripper, base string, opts ...aoption.RequestOption) *anthropic.Client {
	c := anthropic.NewClient(append([]aoption.RequestOption{
		aoption.WithBaseURL(base), aoption.WithAPIKey("test"),
		aoption.WithHTTPClient(&http.Client{Transport: rt}), aoption.WithMaxRetries(0),
	}, opts...)...)
	return &c
}

func unlimited() *guardtest.Budget { return guardtest.New(guardtest.Limits{}) }

// checkEndedOnce fails unless every reservation was ended exactly once.
func checkEndedOnce(t testing.TB, b *guardtest.Budget) {
	t.Helper()
	s := b.Stats()
	if s.EndedTwice != 0 {
		t.Errorf("reservations ended twice: %d", s.EndedTwice)
	}
	if s.InFlight != 0 {
		t.Errorf("reservations still in flight: %d (reserved %d, settled %d, cancelled %d)",
			s.InFlight, s.Reserved, s.Settled, s.Cancelled)
	}
}
