package web

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/leasehold/leasehold/cluster"
	"github.com/leasehold/leasehold/fsm"
	"github.com/leasehold/leasehold/internal/pki"
	"github.com/leasehold/leasehold/transport"
	pb "github.com/leasehold/leasehold/transport/leaseholdpb"
)

// Console limits.
const (
	// defaultKeys and maxKeys bound the keys one page lists.
	defaultKeys = 20
	maxKeys     = 100
	// maxModels bounds the models one page lists.
	maxModels = 20
	// forwardedHeader marks a write a follower forwarded to the leader,
	// which does not forward it again.
	forwardedHeader = "X-Leasehold-Forwarded-By"
)

func staticFS() fs.FS {
	sub, err := fs.Sub(assets, "assets")
	if err != nil {
		panic(err)
	}
	return sub
}

// nodeView is a node's health as the console shows it, and as /api/node
// answers it to other nodes' consoles.
type nodeView struct {
	ID            string   `json:"id"`
	RaftAddr      string   `json:"raft_addr,omitempty"`
	Voter         bool     `json:"voter"`
	State         string   `json:"state"`
	LeaderID      string   `json:"leader_id"`
	Term          uint64   `json:"term"`
	AppliedIndex  uint64   `json:"applied_index"`
	CommitIndex   uint64   `json:"commit_index"`
	LastContactMs int64    `json:"last_contact_ms"`
	Ready         bool     `json:"ready"`
	Problems      []string `json:"problems,omitempty"`
	// Reachable is false when the console could not ask the node; Error
	// says why.
	Reachable bool   `json:"reachable"`
	Error     string `json:"error,omitempty"`
	Self      bool   `json:"self,omitempty"`
	URL       string `json:"url,omitempty"` // its console, when known
}

func healthView(h cluster.Health) nodeView {
	return nodeView{ID: h.ID, Voter: h.Voter, State: h.State, LeaderID: h.LeaderID, Term: h.Term, AppliedIndex: h.AppliedIndex,
		CommitIndex: h.CommitIndex, LastContactMs: h.LastContact.Milliseconds(), Ready: len(h.Problems) == 0,
		Problems: h.Problems, Reachable: true}
}

func (s *Server) apiNode(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, healthView(s.cfg.Node.Health()))
}

// clusterView is the cluster as this node sees it.
type clusterView struct {
	Node     string     `json:"node"` // the node serving the console
	LeaderID string     `json:"leader_id"`
	Term     uint64     `json:"term"`
	Members  []nodeView `json:"members"`
	Keys     int64      `json:"keys"`
	Leases   int64      `json:"leases"`
	Sessions int64      `json:"sessions"`
	// This node's caps on keys and sessions (0: not known); the leader
	// refuses a new key or client_id at its cap.
	MaxKeys     int64 `json:"max_keys"`
	MaxSessions int64 `json:"max_sessions"`
}

// clusterState gathers the members from the Raft configuration, this
// node's health from itself and the others' from their consoles, all at
// once, each bounded by peerTimeout.
func (s *Server) clusterState(ctx context.Context) (clusterView, error) {
	st, err := s.cfg.Node.Status(ctx, &pb.StatusRequest{})
	if err != nil {
		return clusterView{}, err
	}
	cv := clusterView{Node: st.NodeId, LeaderID: st.LeaderId, Term: st.Term, Keys: st.Keys, Leases: st.Leases,
		Sessions: st.Sessions, MaxKeys: st.MaxKeys, MaxSessions: st.MaxSessions, Members: make([]nodeView, len(st.Servers))}
	var wg sync.WaitGroup
	for i, srv := range st.Servers {
		// Suffrage is this configuration's, here and for the peers, so
		// every row agrees with the one configuration listed.
		cv.Members[i] = nodeView{ID: srv.Id, RaftAddr: srv.RaftAddr, Voter: srv.Voter}
		if srv.Id == st.NodeId {
			v := healthView(s.cfg.Node.Health())
			v.RaftAddr, v.Voter, v.Self = srv.RaftAddr, srv.Voter, true
			cv.Members[i] = v
			continue
		}
		addr, ok := s.peerAddr(srv.Id)
		if !ok {
			cv.Members[i].Error = "its console address is unknown here (serve --console-peers, or --gossip-addr with --http-addr on every node)"
			continue
		}
		cv.Members[i].URL = s.Scheme() + "://" + addr + "/"
		wg.Go(func() {
			v, err := s.peerNode(ctx, addr)
			if err != nil {
				cv.Members[i].Error = err.Error()
				return
			}
			v.RaftAddr, v.Voter, v.URL = srv.RaftAddr, srv.Voter, cv.Members[i].URL
			cv.Members[i] = v
		})
	}
	wg.Wait()
	return cv, nil
}

func (s *Server) peerAddr(id string) (string, bool) {
	if s.cfg.Peers == nil {
		return "", false
	}
	return s.cfg.Peers.HTTPAddr(id)
}

// peerNode asks another node's console for its health.
func (s *Server) peerNode(ctx context.Context, addr string) (nodeView, error) {
	ctx, cancel := context.WithTimeout(ctx, peerTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.Scheme()+"://"+addr+"/api/node", nil)
	if err != nil {
		return nodeView{}, err
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return nodeView{}, fmt.Errorf("unreachable: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nodeView{}, fmt.Errorf("unreachable: %s answered %s", addr, resp.Status)
	}
	var v nodeView
	if err := json.NewDecoder(http.MaxBytesReader(nil, resp.Body, 1<<20)).Decode(&v); err != nil {
		return nodeView{}, fmt.Errorf("unreadable answer from %s: %w", addr, err)
	}
	v.Reachable = true
	return v, nil
}

func (s *Server) apiCluster(w http.ResponseWriter, r *http.Request) {
	cv, err := s.clusterState(r.Context())
	if err != nil {
		writeJSON(w, http.StatusInternalServerError, map[string]string{"error": err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, cv)
}

// limitView is a limit as the console shows it.
type limitView struct {
	Algorithm string  `json:"algorithm"` // token-bucket, sliding-window, concurrency
	Limit     int64   `json:"limit"`
	Per       string  `json:"per"`
	Burst     int64   `json:"burst"`
	Slots     int32   `json:"slots"`
	Strict    bool    `json:"strict"`
	MaxLease  string  `json:"max_lease"`
	MaxDebt   int64   `json:"max_debt"`
	Pinned    bool    `json:"pinned"` // set by SetLimit, not by a client
	PerSecond float64 `json:"per_second"`
	Text      string  `json:"text"`
}

// algorithms are the algorithms in the order the form lists them.
var algorithms = []fsm.Algorithm{fsm.TokenBucket, fsm.SlidingWindow, fsm.Concurrency}

var algorithmNames = map[fsm.Algorithm]string{
	fsm.TokenBucket: "token-bucket", fsm.SlidingWindow: "sliding-window", fsm.Concurrency: "concurrency",
}

var algorithmsByName = map[string]pb.Algorithm{
	"token-bucket":   pb.Algorithm_TOKEN_BUCKET,
	"sliding-window": pb.Algorithm_SLIDING_WINDOW,
	"concurrency":    pb.Algorithm_CONCURRENCY,
}

func limitOf(l fsm.Limit, pinned bool) *limitView {
	v := &limitView{Algorithm: algorithmNames[l.Algorithm], Limit: l.Limit, Per: l.Period.String(), Burst: l.Burst,
		Slots: l.Slots, Strict: l.Strict, MaxLease: l.MaxLease.String(), MaxDebt: l.MaxDebt, Pinned: pinned}
	switch l.Algorithm {
	case fsm.Concurrency:
		v.Text = fmt.Sprintf("%d at once", l.Limit)
	default:
		if l.Period > 0 {
			v.PerSecond = float64(l.Limit) / l.Period.Seconds()
		}
		v.Text = fmt.Sprintf("%d per %v", l.Limit, l.Period)
		if l.Algorithm == fsm.SlidingWindow {
			v.Text += " (window)"
		}
	}
	if l.Strict {
		v.Text += ", strict"
	}
	if l.MaxDebt > 0 {
		v.Text += fmt.Sprintf(", max debt %d", l.MaxDebt)
	}
	return v
}

// keyRow is one key of the console's table.
type keyRow struct {
	Key       string     `json:"key"`
	Model     string     `json:"model,omitempty"`
	Admitted  float64    `json:"admitted_per_s"`
	Denied    float64    `json:"denied_per_s"`
	Weight    float64    `json:"weight"`
	Limit     *limitView `json:"limit,omitempty"`
	Leases    int        `json:"leases"`
	Lessees   int        `json:"lessees"`
	Leased    int64      `json:"leased"`
	Series    seriesView `json:"series"`
	Untracked bool       `json:"untracked,omitempty"` // not among the busiest: no series
}

// modelRow sums the busiest keys of one model.
type modelRow struct {
	Model    string  `json:"model"`
	Admitted float64 `json:"admitted_per_s"`
	Denied   float64 `json:"denied_per_s"`
	Keys     int     `json:"keys"`
}

// keysView is the keys part of the console.
type keysView struct {
	Node       string     `json:"node"`
	Query      string     `json:"q"`
	IntervalMs int64      `json:"interval_ms"`
	Times      []int64    `json:"times"`
	Admitted   float64    `json:"admitted_per_s"`
	Denied     float64    `json:"denied_per_s"`
	Total      seriesView `json:"total"`
	Keys       []keyRow   `json:"keys"`
	Models     []modelRow `json:"models"`
}

// keysState builds the keys view: the n busiest keys containing q (and q
// itself, if it is a key with a limit that is not among them), with their
// limits, leases and series; and the models of the busiest keys.
func (s *Server) keysState(q string, n int) keysView {
	act := s.cfg.Node.Activity(max(n, trackedForSeries), q)
	names := make([]string, 0, len(act.Keys)+1)
	for _, k := range act.Keys {
		names = append(names, k.Key)
	}
	snap := s.series.snapshot(names)
	out := keysView{Node: s.cfg.Node.ID(), Query: q, IntervalMs: s.cfg.SampleInterval.Milliseconds(), Times: snap.Times,
		Admitted: snap.TotalA, Denied: snap.TotalD, Total: snap.Total}

	// Models, over every busiest key that matches.
	models := map[string]*modelRow{}
	for _, k := range act.Keys {
		m := modelOf(k.Key)
		if m == "" {
			continue
		}
		row := models[m]
		if row == nil {
			row = &modelRow{Model: m}
			models[m] = row
		}
		kv := snap.Keys[k.Key]
		row.Admitted += kv.Admitted
		row.Denied += kv.Denied
		row.Keys++
	}
	for _, m := range models {
		out.Models = append(out.Models, *m)
	}
	slices.SortFunc(out.Models, func(a, b modelRow) int {
		if c := cmpFloat(b.Admitted+b.Denied, a.Admitted+a.Denied); c != 0 {
			return c
		}
		return strings.Compare(a.Model, b.Model)
	})
	if len(out.Models) > maxModels {
		out.Models = out.Models[:maxModels]
	}

	// The n busiest, by their recent rate (the summary's weight breaks
	// ties and ranks keys with no series yet).
	rows := make([]keyRow, 0, len(act.Keys))
	for _, k := range act.Keys {
		kv := snap.Keys[k.Key]
		rows = append(rows, keyRow{Key: k.Key, Model: modelOf(k.Key), Admitted: kv.Admitted, Denied: kv.Denied,
			Weight: k.Weight, Series: kv.Series})
	}
	slices.SortStableFunc(rows, func(a, b keyRow) int {
		if c := cmpFloat(b.Admitted+b.Denied, a.Admitted+a.Denied); c != 0 {
			return c
		}
		return cmpFloat(b.Weight, a.Weight)
	})
	if len(rows) > n {
		rows = rows[:n]
	}
	if q != "" && !slices.ContainsFunc(rows, func(r keyRow) bool { return r.Key == q }) {
		rows = append(rows, keyRow{Key: q, Model: modelOf(q), Untracked: true})
	}
	keys := make([]string, len(rows))
	for i, r := range rows {
		keys[i] = r.Key
	}
	for i, st := range s.cfg.Node.KeyStates(keys) {
		if st.Found {
			rows[i].Limit = limitOf(st.Limit, st.Pinned)
		}
		rows[i].Leases, rows[i].Lessees, rows[i].Leased = st.Leases, st.Lessees, st.Leased
	}
	if n := len(rows); n > 0 && rows[n-1].Untracked && rows[n-1].Limit == nil {
		rows = rows[:n-1] // the query is not a key
	}
	out.Keys = rows
	return out
}

func cmpFloat(a, b float64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// keysQuery reads q and n from r.
func keysQuery(r *http.Request) (string, int) {
	q := strings.TrimSpace(r.URL.Query().Get("q"))
	n := defaultKeys
	if v, err := strconv.Atoi(r.URL.Query().Get("n")); err == nil && v > 0 {
		n = min(v, maxKeys)
	}
	return q, n
}

func (s *Server) apiKeys(w http.ResponseWriter, r *http.Request) {
	q, n := keysQuery(r)
	writeJSON(w, http.StatusOK, s.cachedKeys(q, n))
}

// keysCacheTTL is how long a keys view is served again to other requests
// for the same page: every open console polls every second, and a view
// counts the live leases under the state machine's lock.
const keysCacheTTL = 500 * time.Millisecond

// keysCache holds recent keys views by query.
type keysCache struct {
	mu      sync.Mutex
	entries map[string]cachedView
}

type cachedView struct {
	at time.Time
	v  keysView
}

// cachedKeys returns keysState(q, n), computed at most every keysCacheTTL
// per (q, n).
func (s *Server) cachedKeys(q string, n int) keysView {
	k := strconv.Itoa(n) + "|" + q
	now := time.Now()
	s.keys.mu.Lock()
	if e, ok := s.keys.entries[k]; ok && now.Sub(e.at) < keysCacheTTL {
		s.keys.mu.Unlock()
		return e.v
	}
	s.keys.mu.Unlock()
	v := s.keysState(q, n)
	s.keys.mu.Lock()
	defer s.keys.mu.Unlock()
	if s.keys.entries == nil || len(s.keys.entries) >= 64 {
		s.keys.entries = map[string]cachedView{} // bounded: start again
	}
	s.keys.entries[k] = cachedView{at: now, v: v}
	return v
}

// limitForm is the console's limit form, as posted. It has an input for
// every field of a Limit: a set replaces the whole limit, and a field
// without an input would be set to its default on every edit.
type limitForm struct {
	Action    string `json:"action"` // set or delete
	Key       string `json:"key"`
	Algorithm string `json:"algorithm"`
	Limit     string `json:"limit"`
	Per       string `json:"per"`
	Burst     string `json:"burst"`
	Slots     string `json:"slots"`
	Strict    bool   `json:"strict"`
	MaxLease  string `json:"max_lease"`
	MaxDebt   string `json:"max_debt"`
}

// formFields names the form's input for each field of a SetLimitRequest, as
// transport's Validate functions name them.
var formFields = map[string]string{
	"key":                "key",
	"limit":              "limit",
	"limit.algorithm":    "algorithm",
	"limit.limit":        "limit",
	"limit.period_ns":    "per",
	"limit.burst":        "burst",
	"limit.slots":        "slots",
	"limit.max_lease_ns": "max_lease",
	"limit.max_debt":     "max_debt",
}

// formError is a problem with the form: the input at fault ("" for none)
// and the message.
type formError struct {
	Field   string `json:"field,omitempty"`
	Message string `json:"message"`
}

func (e *formError) Error() string { return e.Message }

// request turns the form into the API request, checked with the API's own
// Validate functions, so the console refuses what the API would, with the
// API's messages.
func (f limitForm) request() (set *pb.SetLimitRequest, del *pb.DeleteLimitRequest, err error) {
	switch f.Action {
	case "delete":
		del = &pb.DeleteLimitRequest{Key: f.Key}
		return nil, del, apiError(transport.ValidateDeleteLimit(del))
	case "set", "":
	default:
		return nil, nil, &formError{Message: fmt.Sprintf("unknown action %q: want set or delete", f.Action)}
	}
	alg, ok := algorithmsByName[f.Algorithm]
	if !ok {
		return nil, nil, &formError{Field: "algorithm", Message: fmt.Sprintf("algorithm %q: want token-bucket, sliding-window or concurrency", f.Algorithm)}
	}
	l := &pb.Limit{Algorithm: alg, Strict: f.Strict}
	ints := []struct {
		name, v string
		dst     *int64
	}{{"limit", f.Limit, &l.Limit}, {"burst", f.Burst, &l.Burst}, {"max_debt", f.MaxDebt, &l.MaxDebt}}
	for _, it := range ints {
		if it.v == "" {
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSpace(it.v), 10, 64)
		if err != nil {
			return nil, nil, &formError{Field: it.name, Message: fmt.Sprintf("%s %q is not a whole number", it.name, it.v)}
		}
		*it.dst = n
	}
	if f.Slots != "" {
		n, err := strconv.ParseInt(strings.TrimSpace(f.Slots), 10, 32)
		if err != nil {
			return nil, nil, &formError{Field: "slots", Message: fmt.Sprintf("slots %q is not a whole number in [0, %d]", f.Slots, transport.MaxSlots)}
		}
		l.Slots = int32(n)
	}
	durs := []struct {
		name, v string
		dst     *int64
	}{{"per", f.Per, &l.PeriodNs}, {"max_lease", f.MaxLease, &l.MaxLeaseNs}}
	for _, it := range durs {
		if it.v == "" {
			continue
		}
		d, err := time.ParseDuration(strings.TrimSpace(it.v))
		if err != nil {
			return nil, nil, &formError{Field: it.name, Message: fmt.Sprintf("%s %q is not a duration; write it as 1s, 1m or 1h", it.name, it.v)}
		}
		*it.dst = int64(d)
	}
	set = &pb.SetLimitRequest{Key: f.Key, Limit: l}
	if err := transport.ValidateSetLimit(set); err != nil {
		return nil, nil, apiError(err)
	}
	return set, nil, refuseDropped(cluster.LimitFromPB(l))
}

// limitField is a field of a limit, as the form has it.
type limitField struct {
	input string                 // the form's input (and limitForm's JSON name)
	label string                 // as a message names it
	value func(fsm.Limit) string // as the form writes it
}

// limitFields are the fields of a limit the form has an input for.
var limitFields = []limitField{
	{"algorithm", "algorithm", func(l fsm.Limit) string { return algorithmNames[l.Algorithm] }},
	{"limit", "limit", func(l fsm.Limit) string { return strconv.FormatInt(l.Limit, 10) }},
	{"per", "per", func(l fsm.Limit) string { return l.Period.String() }},
	{"burst", "burst", func(l fsm.Limit) string { return strconv.FormatInt(l.Burst, 10) }},
	{"slots", "slots", func(l fsm.Limit) string { return strconv.FormatInt(int64(l.Slots), 10) }},
	{"strict", "strict", func(l fsm.Limit) string { return strconv.FormatBool(l.Strict) }},
	{"max_lease", "max lease", func(l fsm.Limit) string { return l.MaxLease.String() }},
	{"max_debt", "max debt", func(l fsm.Limit) string { return strconv.FormatInt(l.MaxDebt, 10) }},
}

// keeps reports whether the state machine keeps field f of l as given: a
// zero is a default, and kept; another value is lost when Normalize clears
// the field, as it does those l's algorithm does not use.
func keeps(l fsm.Limit, f limitField) bool {
	v := f.value(l)
	return v == f.value(fsm.Limit{Algorithm: l.Algorithm}) || v == f.value(l.Normalize())
}

// refuseDropped refuses l if it gives a value its algorithm does not use,
// rather than set a limit without it (as `limits set` refuses such a flag).
func refuseDropped(l fsm.Limit) error {
	for _, f := range limitFields {
		if !keeps(l, f) {
			return &formError{Field: f.input, Message: fmt.Sprintf("%s: a %s limit does not use it (it would be dropped); leave it out, or pick the algorithm that does",
				f.label, algorithmNames[l.Algorithm])}
		}
	}
	return nil
}

// changes says which fields of a limit going from was to now change, and
// from what to what ("limit 100 → 200, max debt 50 → 0"), or "unchanged":
// a set replaces the whole limit, so a field the form was not sent goes to
// its default, and the answer says so.
func changes(was, now fsm.Limit) string {
	was, now = was.Normalize(), now.Normalize()
	var out []string
	for _, f := range limitFields {
		if a, b := f.value(was), f.value(now); a != b {
			out = append(out, fmt.Sprintf("%s %s → %s", f.label, a, b))
		}
	}
	if len(out) == 0 {
		return "unchanged"
	}
	return strings.Join(out, ", ")
}

// algorithmsUsing names the algorithms that use the form's input, space
// separated, for the page's script to disable it under the others.
func algorithmsUsing(input string) (string, error) {
	i := slices.IndexFunc(limitFields, func(f limitField) bool { return f.input == input })
	if i < 0 {
		return "", fmt.Errorf("algorithmsUsing: the form has no input %q", input)
	}
	var names []string
	for _, alg := range algorithms {
		every := fsm.Limit{Algorithm: alg, Limit: 10, Period: time.Minute, Burst: 7, Slots: 4, Strict: true,
			MaxLease: time.Second, MaxDebt: 3}
		if keeps(every, limitFields[i]) {
			names = append(names, algorithmNames[alg])
		}
	}
	return strings.Join(names, " "), nil
}

// apiError turns an error of the API into a formError naming the input;
// the message is the API's own.
func apiError(err error) error {
	if err == nil {
		return nil
	}
	fe := &formError{Message: err.Error()}
	var ie *transport.InvalidError
	if errors.As(err, &ie) {
		fe.Field = formFields[ie.Field]
	}
	return fe
}

// limitResult is the outcome of a write from the console.
type limitResult struct {
	OK      bool   `json:"ok"`
	Message string `json:"message"`
	Field   string `json:"field,omitempty"`
	// Leader names the leader when this node could not make the change.
	Leader    string `json:"leader,omitempty"`
	LeaderURL string `json:"leader_url,omitempty"`
}

// write makes the change f asks for, as this node (with its identity) or,
// on a follower, through the leader's console when its address is known.
// by names the caller, for the log.
func (s *Server) write(ctx context.Context, f limitForm, by pki.Identity, forwarded bool) (limitResult, int) {
	set, del, err := f.request()
	if err != nil {
		var fe *formError
		errors.As(err, &fe)
		return limitResult{Message: fe.Message, Field: fe.Field}, http.StatusBadRequest
	}
	var msg string
	if set != nil {
		// What the key had, for the answer to say what the set changed.
		before := s.cfg.Node.KeyStates([]string{f.Key})[0]
		_, err = s.cfg.Node.SetLimit(ctx, set)
		msg = fmt.Sprintf("%s set the limit of %q", s.cfg.Node.ID(), f.Key)
		if before.Found {
			msg += ": " + changes(before.Limit, cluster.LimitFromPB(set.Limit))
		}
	} else {
		var resp *pb.DeleteLimitResponse
		resp, err = s.cfg.Node.DeleteLimit(ctx, del)
		// The Node is this build's, which always says whether there was
		// a limit: a leader of another build is reached only through its
		// own console (forward).
		if err == nil && !resp.GetFound() {
			return limitResult{Message: fmt.Sprintf("key %q has no limit", f.Key), Field: "key"}, http.StatusNotFound
		}
		msg = fmt.Sprintf("%s deleted the limit of %q", s.cfg.Node.ID(), f.Key)
	}
	var nl *transport.NotLeaderError
	switch {
	case err == nil:
		s.log.Info("console: limit changed", "by", by.String(), "action", f.Action, "key", f.Key)
		return limitResult{OK: true, Message: msg}, http.StatusOK
	case errors.As(err, &nl):
		res, code := s.forward(ctx, f, nl, forwarded)
		if res.OK {
			// The leader logs this node as the one that changed it: the
			// operator's name is known only here.
			s.log.Info("console: limit changed through the leader", "by", by.String(), "action", f.Action, "key", f.Key,
				"leader", nl.LeaderID)
		}
		return res, code
	}
	res := limitResult{Message: err.Error()}
	if fe, ok := apiError(err).(*formError); ok && errors.Is(err, transport.ErrInvalid) {
		res.Field = fe.Field
		return res, http.StatusBadRequest
	}
	return res, http.StatusServiceUnavailable
}

// forward sends a write this follower cannot make to the leader's console,
// which makes it with its own identity (this node's certificate is a
// node's, which may). Without the leader's address it says where the
// leader is.
func (s *Server) forward(ctx context.Context, f limitForm, nl *transport.NotLeaderError, forwarded bool) (limitResult, int) {
	res := limitResult{Leader: nl.LeaderID}
	if nl.LeaderID == "" {
		res.Message = fmt.Sprintf("%s is not the leader and knows none (an election?); try again in a moment", s.cfg.Node.ID())
		return res, http.StatusServiceUnavailable
	}
	addr, ok := s.peerAddr(nl.LeaderID)
	if ok {
		res.LeaderURL = s.Scheme() + "://" + addr + "/"
	}
	if !ok || forwarded {
		res.Message = fmt.Sprintf("%s is a follower and cannot change limits; %s leads (Raft %s): make the change in %s's console",
			s.cfg.Node.ID(), nl.LeaderID, nl.LeaderRaftAddr, nl.LeaderID)
		if res.LeaderURL != "" {
			res.Message += " at " + res.LeaderURL
		}
		return res, http.StatusConflict
	}
	body, _ := json.Marshal(f)
	ctx, cancel := context.WithTimeout(ctx, peerTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, res.LeaderURL+"api/limits", bytes.NewReader(body))
	if err != nil {
		res.Message = err.Error()
		return res, http.StatusInternalServerError
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(forwardedHeader, s.cfg.Node.ID())
	resp, err := s.client.Do(req)
	if err != nil {
		res.Message = fmt.Sprintf("%s is a follower; forwarding to the leader %s failed: %v", s.cfg.Node.ID(), nl.LeaderID, err)
		return res, http.StatusBadGateway
	}
	defer resp.Body.Close()
	var lr limitResult
	if err := json.NewDecoder(http.MaxBytesReader(nil, resp.Body, 1<<20)).Decode(&lr); err != nil {
		res.Message = fmt.Sprintf("%s is a follower; the leader %s answered %s", s.cfg.Node.ID(), nl.LeaderID, resp.Status)
		return res, http.StatusBadGateway
	}
	if lr.OK {
		lr.Message += fmt.Sprintf(" (forwarded by %s)", s.cfg.Node.ID())
	}
	return lr, resp.StatusCode
}

// apiLimit takes a write as JSON: from the console's script, or forwarded
// by a follower's console.
func (s *Server) apiLimit(w http.ResponseWriter, r *http.Request) {
	var f limitForm
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10))
	// A field this node does not know (misspelt, or one a newer follower
	// forwards) is refused: ignored, the limit would be set without it.
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		writeJSON(w, http.StatusBadRequest, limitResult{Message: "unreadable request: " + err.Error()})
		return
	}
	by, _, _ := s.caller(r)
	res, code := s.write(r.Context(), f, by, r.Header.Get(forwardedHeader) != "")
	writeJSON(w, code, res)
}

// formLimit takes the page's form and renders the page with the outcome.
func (s *Server) formLimit(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
	if err := r.ParseForm(); err != nil {
		http.Error(w, "unreadable form: "+err.Error(), http.StatusBadRequest)
		return
	}
	f := limitForm{
		Action: r.PostFormValue("action"), Key: r.PostFormValue("key"), Algorithm: r.PostFormValue("algorithm"),
		Limit: r.PostFormValue("limit"), Per: r.PostFormValue("per"), Burst: r.PostFormValue("burst"),
		Slots: r.PostFormValue("slots"), Strict: r.PostFormValue("strict") != "", MaxLease: r.PostFormValue("max_lease"),
		MaxDebt: r.PostFormValue("max_debt"),
	}
	by, _, _ := s.caller(r)
	res, code := s.write(r.Context(), f, by, false)
	s.render(w, r, code, &res, f)
}

// pageData is what the page template shows.
type pageData struct {
	Node     string
	Caller   string
	Insecure bool
	CanWrite bool
	Cluster  clusterView
	Err      string
	Keys     keysView
	Result   *limitResult
	Form     limitForm
}

func (s *Server) page(w http.ResponseWriter, r *http.Request) {
	s.render(w, r, http.StatusOK, nil, limitForm{Algorithm: "token-bucket", Per: "1m"})
}

func (s *Server) render(w http.ResponseWriter, r *http.Request, code int, res *limitResult, f limitForm) {
	id, insecure, _ := s.caller(r)
	q, n := keysQuery(r)
	d := pageData{Node: s.cfg.Node.ID(), Caller: id.String(), Insecure: insecure,
		CanWrite: id.Role == pki.RoleOperator || id.Role == pki.RoleNode, Keys: s.cachedKeys(q, n), Result: res, Form: f}
	cv, err := s.clusterState(r.Context())
	if err != nil {
		d.Err = err.Error()
	}
	d.Cluster = cv
	var buf bytes.Buffer
	if err := pageTemplate.Execute(&buf, d); err != nil {
		s.log.Error("console: render", "err", err)
		http.Error(w, "render: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'")
	w.WriteHeader(code)
	_, _ = w.Write(buf.Bytes())
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// fmtRate formats a per-second rate for the page.
func fmtRate(v float64) string {
	switch {
	case v == 0:
		return "0"
	case v >= 100:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case v >= 10:
		return strconv.FormatFloat(v, 'f', 1, 64)
	}
	return strconv.FormatFloat(v, 'f', 2, 64)
}
