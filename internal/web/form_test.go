package web

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/leasehold/leasehold/fsm"
	"github.com/leasehold/leasehold/internal/clustertest"
)

// debtKey is a key whose limit owes up to 50 tokens, as `limits set
// --limit 100 --per 1m --max-debt 50` leaves it (normalized, as the state
// machine keeps it).
const debtKey = "acme:gpt-4.1"

func debtLimits() map[string]fsm.Limit {
	return map[string]fsm.Limit{debtKey: {Algorithm: fsm.TokenBucket, Limit: 100, Period: time.Minute, Burst: 100,
		MaxLease: fsm.DefaultMaxLease, MaxDebt: 50}}
}

// TestConsoleEditDroppedMaxDebt: the console's form had no max_debt, so
// editing a limit from it (clicking the key, raising its limit) set the
// key's max_debt to 0, and said only that the limit was set. The keys view
// now carries max_debt (what clicking a key fills the form from), the page
// has its input, and a set sends it: from the page's form, as JSON, and
// forwarded by a follower.
func TestConsoleEditDroppedMaxDebt(t *testing.T) {
	leader := &fakeNode{id: "n1", limits: debtLimits()}
	_, addr := serve(t, Config{Node: leader})
	c := &http.Client{Timeout: 5 * time.Second}

	code, body := do(t, c, "GET", "http://"+addr+"/api/keys?q="+url.QueryEscape(debtKey), "", "")
	var keys struct {
		Keys []struct {
			Key   string         `json:"key"`
			Limit map[string]any `json:"limit"`
		} `json:"keys"`
	}
	if err := json.Unmarshal([]byte(body), &keys); code != http.StatusOK || err != nil {
		t.Fatalf("/api/keys: %d %v", code, err)
	}
	if len(keys.Keys) != 1 || keys.Keys[0].Limit["max_debt"] != float64(50) ||
		!strings.HasSuffix(keys.Keys[0].Limit["text"].(string), ", max debt 50") {
		t.Errorf("/api/keys shows %+v; want %s with max_debt 50 (for the form to fill in), and in its text", keys.Keys, debtKey)
	}
	if code, page := do(t, c, "GET", "http://"+addr+"/", "", ""); code != http.StatusOK || !strings.Contains(page, `name="max_debt"`) {
		t.Errorf("the page (%d) has no max_debt input", code)
	}

	edit := map[string]string{"action": "set", "key": debtKey, "algorithm": "token-bucket", "limit": "200", "per": "1m",
		"burst": "100", "max_lease": "2s", "max_debt": "50"}
	b, _ := json.Marshal(edit)
	if code, body := do(t, c, "POST", "http://"+addr+"/api/limits", "application/json", string(b)); code != http.StatusOK {
		t.Fatalf("POST /api/limits: %d %s", code, body)
	}
	if got := leader.lastSet().GetLimit().GetMaxDebt(); got != 50 {
		t.Errorf("an edit posted as JSON set max_debt %d; want 50", got)
	}

	form := url.Values{}
	for k, v := range edit {
		form.Set(k, v)
	}
	form.Set("max_debt", "40")
	if code, body := do(t, c, "POST", "http://"+addr+"/limits", "application/x-www-form-urlencoded", form.Encode()); code != http.StatusOK {
		t.Fatalf("POST /limits: %d %.300s", code, body)
	}
	if got := leader.lastSet().GetLimit().GetMaxDebt(); got != 40 {
		t.Errorf("an edit from the page's form set max_debt %d; want 40", got)
	}
	// A refused form comes back with the max_debt it was sent.
	form.Set("limit", "0")
	if code, page := do(t, c, "POST", "http://"+addr+"/limits", "application/x-www-form-urlencoded", form.Encode()); code != http.StatusBadRequest ||
		!regexp.MustCompile(`name="max_debt"[^>]* value="40"`).MatchString(page) {
		t.Errorf("a refused form (%d) does not keep its max_debt", code)
	}

	follower := &fakeNode{id: "n2", leader: "n1"}
	_, followerAddr := serve(t, Config{Node: follower, Peers: StaticPeers{"n1": addr}})
	form.Set("limit", "300")
	form.Set("max_debt", "30")
	if code, body := do(t, c, "POST", "http://"+followerAddr+"/limits", "application/x-www-form-urlencoded", form.Encode()); code != http.StatusOK {
		t.Fatalf("POST /limits on a follower: %d %.300s", code, body)
	}
	if got := leader.lastSet().GetLimit(); got.GetLimit() != 300 || got.GetMaxDebt() != 30 {
		t.Errorf("an edit forwarded by a follower set %v; want limit 300, max_debt 30", got)
	}
}

// TestConsoleBurstOfASlidingWindowWasDropped: the form took a value its
// algorithm does not use (a sliding window's burst, a concurrency limit's
// max debt), said the limit was set, and the state machine dropped it
// (fsm.Limit.Normalize), as `limits set` did with such flags. The form now
// refuses it, naming the input, as the CLI does; a zero (what clicking a key
// fills in, "0s" for a concurrency limit's per) is no value and passes.
func TestConsoleBurstOfASlidingWindowWasDropped(t *testing.T) {
	n := &fakeNode{id: "n1"}
	_, addr := serve(t, Config{Node: n})
	c := &http.Client{Timeout: 5 * time.Second}
	post := func(f limitForm) (int, limitResult) {
		t.Helper()
		b, _ := json.Marshal(f)
		code, body := do(t, c, "POST", "http://"+addr+"/api/limits", "application/json", string(b))
		var res limitResult
		if err := json.Unmarshal([]byte(body), &res); err != nil {
			t.Fatalf("%+v: %v: %s", f, err, body)
		}
		return code, res
	}
	unused := map[string][]string{
		"token-bucket":   {"slots"},
		"sliding-window": {"burst", "strict", "max_debt"},
		"concurrency":    {"per", "burst", "slots", "strict", "max_debt"},
	}
	for alg, inputs := range unused {
		for _, input := range inputs {
			f := limitForm{Action: "set", Key: "k", Algorithm: alg, Limit: "10"}
			if alg != "concurrency" {
				f.Per = "1m"
			}
			switch input {
			case "per":
				f.Per = "1m"
			case "burst":
				f.Burst = "5"
			case "slots":
				f.Slots = "5"
			case "strict":
				f.Strict = true
			case "max_debt":
				f.MaxDebt = "5"
			}
			code, res := post(f)
			if code != http.StatusBadRequest || res.Field != input || !strings.Contains(res.Message, "a "+alg+" limit does not use it") {
				t.Errorf("%s with %s: %d %+v; want it refused, naming %s", alg, input, code, res, input)
			}
		}
	}
	if n.setCount() != 0 {
		t.Fatalf("%d limits with a value their algorithm drops were set", n.setCount())
	}
	for _, f := range []limitForm{
		{Key: "k", Algorithm: "concurrency", Limit: "10", Per: "0s", Burst: "0", Slots: "0", MaxDebt: "0", MaxLease: "2s"},
		{Key: "k", Algorithm: "sliding-window", Limit: "10", Per: "1m", Slots: "10", Burst: "0", MaxLease: "2s"},
		{Key: "k", Algorithm: "token-bucket", Limit: "10", Per: "1m", Burst: "10", Strict: true, MaxLease: "2s", MaxDebt: "5"},
	} {
		if code, res := post(f); code != http.StatusOK {
			t.Errorf("%+v: %d %+v; want it set", f, code, res)
		}
	}
	// The page marks each input with the algorithms that use it, for its
	// script to disable the others.
	_, page := do(t, c, "GET", "http://"+addr+"/", "", "")
	for _, want := range []string{
		`id="f-per" data-algorithms="token-bucket sliding-window"`,
		`id="f-burst" data-algorithms="token-bucket"`,
		`id="f-slots" data-algorithms="sliding-window"`,
		`id="f-max-lease" data-algorithms="token-bucket sliding-window concurrency"`,
		`id="f-max-debt" data-algorithms="token-bucket"`,
		`id="f-strict" data-algorithms="token-bucket"`,
	} {
		if !strings.Contains(page, want) {
			t.Errorf("the page has no %s", want)
		}
	}
}

// TestConsoleResetMaxDebtWithoutSayingSo: a set from the console replaces
// the whole limit, and its answer said only "set the limit of", so a
// max_debt the form was not sent (a key typed rather than clicked, or a
// post of its own) was reset to 0 unseen. The answer now names every field
// the set changed, from what to what.
func TestConsoleResetMaxDebtWithoutSayingSo(t *testing.T) {
	n := &fakeNode{id: "n1", limits: debtLimits()}
	_, addr := serve(t, Config{Node: n})
	c := &http.Client{Timeout: 5 * time.Second}
	for _, tc := range []struct {
		name string
		form limitForm
		want string
	}{
		{"the review's repro", limitForm{Action: "set", Key: debtKey, Algorithm: "token-bucket", Limit: "200", Per: "1m"},
			`n1 set the limit of "acme:gpt-4.1": limit 100 → 200, burst 100 → 200, max debt 50 → 0`},
		{"every field kept", limitForm{Action: "set", Key: debtKey, Algorithm: "token-bucket", Limit: "100", Per: "1m", MaxDebt: "50"},
			`n1 set the limit of "acme:gpt-4.1": unchanged`},
		{"a new key", limitForm{Action: "set", Key: "new", Algorithm: "token-bucket", Limit: "100", Per: "1m"},
			`n1 set the limit of "new"`},
	} {
		b, _ := json.Marshal(tc.form)
		code, body := do(t, c, "POST", "http://"+addr+"/api/limits", "application/json", string(b))
		var res limitResult
		if err := json.Unmarshal([]byte(body), &res); err != nil || code != http.StatusOK || res.Message != tc.want {
			t.Errorf("%s: %d %q (%v); want %q", tc.name, code, res.Message, err, tc.want)
		}
	}
}

// TestConsoleUnknownFieldWasIgnored: /api/limits ignored a field it does
// not know, so a misspelt one ("max_debts") or one a newer follower's
// console forwards set the limit without it, and the answer said it was
// set. It is now refused, naming the field.
func TestConsoleUnknownFieldWasIgnored(t *testing.T) {
	n := &fakeNode{id: "n1"}
	_, addr := serve(t, Config{Node: n})
	c := &http.Client{Timeout: 5 * time.Second}
	body := `{"action":"set","key":"k","algorithm":"token-bucket","limit":"10","per":"1m","max_debts":"5"}`
	code, got := do(t, c, "POST", "http://"+addr+"/api/limits", "application/json", body)
	if code != http.StatusBadRequest || !strings.Contains(got, `unknown field \"max_debts\"`) || n.setCount() != 0 {
		t.Errorf("a set with an unknown field: %d %s, %d limits set; want it refused, naming the field", code, got, n.setCount())
	}
}

// TestConsoleDeleteOfAKeyWithNoLimitSaidDeleted: deleting a key that has
// no limit (a misspelt one) from the console answered 200, "deleted the
// limit", as the node's DeleteLimit said nothing of whether there was one.
// It is now 404 with the API's words, the key marked, on the leader's
// console and through a follower's; a key with a limit is still deleted.
// Over a real one-node cluster, so the answer is the state machine's.
func TestConsoleDeleteOfAKeyWithNoLimitSaidDeleted(t *testing.T) {
	node, _ := clustertest.Start(t)
	_, leaderAddr := serve(t, Config{Node: node})
	_, followerAddr := serve(t, Config{Node: &fakeNode{id: "n2", leader: node.ID()}, Peers: StaticPeers{node.ID(): leaderAddr}})
	c := &http.Client{Timeout: 5 * time.Second}
	post := func(addr string, f map[string]string) (int, limitResult) {
		t.Helper()
		b, _ := json.Marshal(f)
		code, body := do(t, c, "POST", "http://"+addr+"/api/limits", "application/json", string(b))
		var res limitResult
		if err := json.Unmarshal([]byte(body), &res); err != nil {
			t.Fatalf("POST /api/limits: %d %q: %v", code, body, err)
		}
		return code, res
	}
	del := func(key string) map[string]string { return map[string]string{"action": "delete", "key": key} }
	missing := func(key string) limitResult {
		return limitResult{Message: fmt.Sprintf("key %q has no limit", key), Field: "key"}
	}

	if code, res := post(leaderAddr, del("nosuch")); code != http.StatusNotFound || res != missing("nosuch") {
		t.Errorf("delete of a key never set: %d %+v; want 404 %+v", code, res, missing("nosuch"))
	}
	set := map[string]string{"action": "set", "key": "k", "algorithm": "token-bucket", "limit": "10", "per": "1m"}
	if code, res := post(leaderAddr, set); code != http.StatusOK || !res.OK {
		t.Fatalf("set: %d %+v", code, res)
	}
	if code, res := post(followerAddr, del("k")); code != http.StatusOK || !res.OK ||
		res.Message != `n1 deleted the limit of "k" (forwarded by n2)` {
		t.Errorf("delete of a key with a limit, through a follower: %d %+v; want 200, deleted", code, res)
	}
	if code, res := post(followerAddr, del("k")); code != http.StatusNotFound || res != missing("k") {
		t.Errorf("delete of a key deleted already, through a follower: %d %+v; want 404 %+v", code, res, missing("k"))
	}
	// The page's own form shows it, the key input marked.
	form := url.Values{"action": {"delete"}, "key": {"nosuch"}}.Encode()
	code, page := do(t, c, "POST", "http://"+leaderAddr+"/limits", "application/x-www-form-urlencoded", form)
	if code != http.StatusNotFound || !strings.Contains(page, `key &#34;nosuch&#34; has no limit`) ||
		!regexp.MustCompile(`name="key"[^>]* class="bad"`).MatchString(page) {
		t.Errorf("the form's delete of a key never set: %d; want 404, the message and the key marked", code)
	}
}
