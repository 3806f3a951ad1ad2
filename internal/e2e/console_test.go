package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/leasehold/leasehold/client"
	"github.com/leasehold/leasehold/internal/bench"
	"github.com/leasehold/leasehold/internal/proc"
	"github.com/leasehold/leasehold/internal/proc/proctest"
	"github.com/leasehold/leasehold/transport"
	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

// screenshotsEnv names a directory the console test saves its screenshots
// to: `make screenshots` makes the README's so.
const screenshotsEnv = "LEASEHOLD_SCREENSHOTS"

// chromium returns the path of a Chromium to drive. Where none is
// installed the test skips, saying how to install one, except in CI
// (CI=true), where .ci/run installs it, so a missing one is a failure.
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	msg := "no chromium on PATH: the console's browser test needs one (Debian: apt-get install -y chromium; `make test` and .ci/run install it)"
	if os.Getenv("CI") != "" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

// newBrowser starts a headless Chromium for t, with the flags it needs to
// run as root on a machine without a network, and a fresh profile.
func newBrowser(t *testing.T) context.Context {
	t.Helper()
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(chromium(t)),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-extensions", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1400, 1100),
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(func() { cancel(); cancelAlloc() })
	// The first run starts the browser; bound it without a timeout on ctx
	// itself, which would stop the browser.
	started := make(chan error, 1)
	go func() { started <- chromedp.Do(ctx, chromedp.Navigate("about:blank")) }()
	select {
	case err := <-started:
		if err != nil {
			t.Fatalf("start chromium: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("chromium did not start within 60s")
	}
	return ctx
}

// step runs a browser action with a timeout.
func step(t *testing.T, ctx context.Context, what string, a chromedp.Action[chromedp.Void]) {
	t.Helper()
	c, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := chromedp.Do(c, a); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// eval evaluates a JavaScript expression in the page.
func eval[T any](t *testing.T, ctx context.Context, expr string) T {
	t.Helper()
	c, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	v, err := chromedp.Run(c, chromedp.Evaluate[T](expr))
	if err != nil {
		t.Fatalf("evaluate %s: %v", expr, err)
	}
	return v
}

// waitJS waits until a JavaScript expression is truthy in the page.
func waitJS(t *testing.T, ctx context.Context, what, expr string, limit time.Duration) {
	t.Helper()
	c, cancel := context.WithTimeout(ctx, limit+5*time.Second)
	defer cancel()
	_, err := chromedp.Run(c, chromedp.Poll[chromedp.Void](expr, chromedp.WithPollingInterval(100*time.Millisecond),
		chromedp.WithPollingTimeout(limit)))
	if err != nil {
		page, _ := chromedp.Run(ctx, chromedp.Evaluate[string](
			`document.body ? JSON.stringify(document.body.dataset) + "\n" + document.body.innerText.slice(0, 3000) : ""`))
		t.Fatalf("%s: %v\npage text:\n%s", what, err, page)
	}
}

// screenshot saves the page as name in $LEASEHOLD_SCREENSHOTS, if set.
func screenshot(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	dir := os.Getenv(screenshotsEnv)
	if dir == "" {
		return
	}
	c, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	png, err := chromedp.Run(c, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, name), png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("saved %s", filepath.Join(dir, name))
}

// load runs SDK clients against keys in the background until the test
// ends (at most limit), as `leasehold bench` does.
func load(t *testing.T, c *procCluster, keys []string, lim client.Limit, limit time.Duration) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	fleet, err := bench.DialFleet(ctx, c.Endpoints(), 3, keys, lim, nil, client.WithInsecure())
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		_, err := bench.Run(ctx, bench.Config{Clients: 3, Keys: len(keys), Duration: limit, SampleEvery: 64}, fleet.Deciders())
		if err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("load: %v", err)
		}
	})
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		_ = fleet.Close()
	})
}

// TestConsoleInABrowser drives the console of a real 3-node cluster in
// headless Chromium: the members, a key's chart moving under load, a limit
// set through the form (on the leader, and on a follower, which forwards
// it) and read back through the API, and the API's own message for a limit
// the API refuses.
func TestConsoleInABrowser(t *testing.T) {
	ctx := newBrowser(t)
	// Plain text: a headless browser cannot be given a client certificate
	// to present (no flag, no DevTools call); the console's access rules
	// over TLS are internal/web's TestAccessWithTLS, against real TLS.
	c := startCluster(t, 3, proctest.Insecure, withHTTP)
	c.waitHealthy(30 * time.Second)
	leader := c.waitLeader(10 * time.Second)

	hot := "acme:gpt-4.1"
	keys := []string{hot, "acme:claude-sonnet-4", "globex:gpt-4.1", "globex:gpt-4.1-mini"}
	for i, k := range keys {
		l := &pb.Limit{Algorithm: pb.Algorithm_TOKEN_BUCKET, Limit: int64(400 - 80*i), PeriodNs: int64(time.Second)}
		onLeader(t, c, 10*time.Second, func(ctx context.Context, api pb.LeaseholdClient) (*pb.SetLimitResponse, error) {
			return api.SetLimit(ctx, &pb.SetLimitRequest{Key: k, Limit: l})
		})
	}
	load(t, c, keys, client.Limit{Rate: 400, Per: time.Second, Burst: 400}, 2*time.Minute)

	url := "http://" + leader.HTTPAddr() + "/"
	step(t, ctx, "open the leader's console", chromedp.Navigate(url))
	waitJS(t, ctx, "three ready members", `document.querySelectorAll("#members tbody tr[data-id].ready").length === 3`, 20*time.Second)
	if got := eval[string](t, ctx, `document.getElementById("leader").textContent`); got != leader.ID() {
		t.Errorf("console names leader %q; want %s", got, leader.ID())
	}

	// The hot key's chart draws admitted/s, and moves.
	chart := fmt.Sprintf(`document.querySelector('svg.chart[data-key=%q]')`, hot)
	waitJS(t, ctx, "the hot key's chart with samples", chart+` && Number(`+chart+`.dataset.samples) >= 3 && Number(`+chart+`.dataset.last) > 0`, 30*time.Second)
	points := eval[string](t, ctx, chart+`.querySelector("polyline.admitted").getAttribute("points")`)
	waitJS(t, ctx, "the chart to move", chart+` && `+chart+`.querySelector("polyline.admitted") && `+
		chart+fmt.Sprintf(`.querySelector("polyline.admitted").getAttribute("points") !== %q`, points), 15*time.Second)
	if n := eval[int](t, ctx, `document.querySelectorAll("#models tbody tr[data-model]").length`); n < 3 {
		t.Errorf("models table has %d rows; want gpt-4.1, claude-sonnet-4 and gpt-4.1-mini", n)
	}
	if os.Getenv(screenshotsEnv) != "" {
		// A picture worth committing: a minute of traffic on the charts.
		waitJS(t, ctx, "a minute of samples", chart+` && Number(`+chart+`.dataset.samples) >= 60`, 90*time.Second)
	}
	screenshot(t, ctx, "console.png")

	// Search narrows the keys.
	step(t, ctx, "search", chromedp.Navigate(url+"?q=globex"))
	waitJS(t, ctx, "only globex keys", `(() => { const r = [...document.querySelectorAll("#keys tbody tr[data-key]")];
		return r.length >= 1 && r.every(x => x.dataset.key.startsWith("globex:")); })()`, 15*time.Second)

	// Clicking a key fills the form with every field of its limit, its
	// max debt too: a set from the form replaces the whole limit.
	debtKey := "tenant-9:gpt-4.1"
	onLeader(t, c, 10*time.Second, func(ctx context.Context, api pb.LeaseholdClient) (*pb.SetLimitResponse, error) {
		return api.SetLimit(ctx, &pb.SetLimitRequest{Key: debtKey, Limit: &pb.Limit{Algorithm: pb.Algorithm_TOKEN_BUCKET,
			Limit: 90, PeriodNs: int64(time.Minute), MaxDebt: 45}})
	})
	step(t, ctx, "search the key with a max debt", chromedp.Navigate(url+"?q="+debtKey))
	waitJS(t, ctx, "the key listed, and the first poll in", fmt.Sprintf(`document.querySelector('a.pick[data-key=%q]') !== null &&
		Number(document.body.dataset.polls) >= 1`, debtKey), 15*time.Second)
	step(t, ctx, "click the key", chromedp.Click(chromedp.CSS(fmt.Sprintf(`a.pick[data-key=%q]`, debtKey))))
	if got := eval[[]string](t, ctx, `["f-key", "f-limit", "f-max-debt"].map(id => document.getElementById(id).value)`); strings.Join(got, " ") != debtKey+" 90 45" {
		t.Errorf("clicking %s filled key, limit and max debt with %q; want %s, 90, 45", debtKey, got, debtKey)
	}

	// Choosing an algorithm disables the inputs it does not use.
	if got := eval[[]string](t, ctx, `(() => { const a = document.getElementById("f-algorithm"); a.value = "concurrency";
		a.dispatchEvent(new Event("change"));
		return [...document.querySelectorAll("#limit-form input:disabled")].map(x => x.name); })()`); strings.Join(got, " ") != "per burst slots max_debt strict" {
		t.Errorf("a concurrency limit's form disables %q; want per, burst, slots, max_debt and strict", got)
	}

	// Set a limit through the form and read it back through the API.
	setForm := func(key, limit, per string) {
		t.Helper()
		js := fmt.Sprintf(`(() => { const f = (id, v) => { document.getElementById(id).value = v; };
			f("f-key", %q); f("f-algorithm", "token-bucket"); f("f-limit", %q); f("f-per", %q);
			f("f-burst", ""); f("f-slots", ""); f("f-max-lease", ""); f("f-max-debt", ""); document.getElementById("f-strict").checked = false; return true; })()`,
			key, limit, per)
		eval[bool](t, ctx, js+` && (window.beforeSubmit = true)`)
		step(t, ctx, "submit the form", chromedp.Click(chromedp.ID("f-set")))
		// The post loads a new page: wait for it, through the navigation.
		ok := poll(20*time.Second, func() bool {
			c, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			done, err := chromedp.Run(c, chromedp.Evaluate[bool](
				`!window.beforeSubmit && document.readyState === "complete" && document.getElementById("result") !== null`))
			return err == nil && done
		})
		if !ok {
			t.Fatal("no result page after submitting the form")
		}
	}
	readBack := func(key string) *pb.GetLimitResponse {
		t.Helper()
		return onLeader(t, c, 10*time.Second, func(ctx context.Context, api pb.LeaseholdClient) (*pb.GetLimitResponse, error) {
			return api.GetLimit(ctx, &pb.GetLimitRequest{Key: key})
		})
	}
	step(t, ctx, "back to the console", chromedp.Navigate(url))
	setForm("tenant-7:gpt-4.1", "250", "1m")
	if ok := eval[bool](t, ctx, `document.getElementById("result").classList.contains("ok")`); !ok {
		t.Fatalf("setting a limit failed: %s", eval[string](t, ctx, `document.getElementById("result").textContent`))
	}
	if got := readBack("tenant-7:gpt-4.1"); !got.Found || got.Limit.Limit != 250 || got.Limit.PeriodNs != int64(time.Minute) || !got.Pinned {
		t.Errorf("GetLimit after the form: %v", got)
	}
	screenshot(t, ctx, "console-limit.png")

	// A limit the API refuses gets the API's own message, and its input is
	// marked.
	setForm("tenant-7:gpt-4.1", "0", "1m")
	wantErr := transport.ValidateSetLimit(&pb.SetLimitRequest{Key: "tenant-7:gpt-4.1",
		Limit: &pb.Limit{Algorithm: pb.Algorithm_TOKEN_BUCKET, Limit: 0, PeriodNs: int64(time.Minute)}})
	if got := strings.TrimSpace(eval[string](t, ctx, `document.getElementById("result").textContent`)); got != wantErr.Error() {
		t.Errorf("form error %q; want the API's %q", got, wantErr)
	}
	if !eval[bool](t, ctx, `document.getElementById("f-limit").classList.contains("bad")`) {
		t.Error("the limit input is not marked")
	}
	if got := readBack("tenant-7:gpt-4.1"); got.Limit.Limit != 250 {
		t.Errorf("a refused change changed the limit: %v", got)
	}

	// On a follower, the form's change is forwarded to the leader.
	var follower *proc.Node
	for _, n := range c.Nodes() {
		if n.ID() != leader.ID() {
			follower = n
			break
		}
	}
	step(t, ctx, "open a follower's console", chromedp.Navigate("http://"+follower.HTTPAddr()+"/"))
	setForm("tenant-8:gpt-4.1", "50", "1s")
	msg := eval[string](t, ctx, `document.getElementById("result").textContent`)
	if !strings.Contains(msg, "forwarded by "+follower.ID()) {
		t.Errorf("a follower's console says %q; want the change forwarded", msg)
	}
	if got := readBack("tenant-8:gpt-4.1"); !got.Found || got.Limit.Limit != 50 {
		t.Errorf("GetLimit after the follower's form: %v", got)
	}
}
