package web

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/leasehold/leasehold/fsm"
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
		!strings.Contains(page, `name="max_debt" id="f-max-debt" inputmode="numeric" value="40"`) {
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
