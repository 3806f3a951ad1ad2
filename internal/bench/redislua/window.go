package redislua

import (
	"errors"
	"fmt"
	"strconv"
	"time"
)

// WindowScript is the usual Redis sliding window: a sorted set of the
// requests of the last window, scored and named by the caller's clock
// reading `now`. It drops the entries older than a window, counts the rest,
// and adds `now` if the count is below the limit. This is the shape of most
// blog-post and library sliding-window logs ("ZREMRANGEBYSCORE, ZCARD,
// ZADD"). It is exact only if every client's clock agrees and no two
// requests carry the same time:
//
//   - a client whose clock runs ahead drops the others' entries before
//     their window has passed, and one whose clock runs behind adds entries
//     the others drop at once: the set holds fewer than the window's
//     requests, and more are admitted;
//
//   - two requests at the same microsecond are one member: the second ZADD
//     only rewrites the first, and the set counts one request for two.
//
//     KEYS[1]  the window's sorted set
//     ARGV[1]  limit, requests per window
//     ARGV[2]  window, microseconds
//     ARGV[3]  now, microseconds (the caller's wall clock)
//
// It returns 1 if admitted, 0 if not.
const WindowScript = `
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) < limit then
  redis.call('ZADD', KEYS[1], now, now)
  redis.call('PEXPIRE', KEYS[1], math.ceil(window / 1000) + 1000)
  return 1
end
return 0
`

// Window calls WindowScript over one connection: one round trip per
// decision. Skew is added to every clock reading it sends, to model a client
// whose wall clock is wrong. A Window is not safe for concurrent use.
type Window struct {
	conn   *Conn
	sha    string
	keys   []string
	limit  int64
	window time.Duration
	skew   time.Duration
	now    func() time.Time

	strs [4]string
	ints [3]int64
}

// NewWindow loads WindowScript on conn and returns a Window over keys, each
// admitting limit requests in any window of the given length (at least a
// microsecond), whose clock reads time.Now() + skew.
func NewWindow(conn *Conn, keys []string, limit int64, window, skew time.Duration) (*Window, error) {
	if limit <= 0 || window < time.Microsecond {
		return nil, fmt.Errorf("redis window: limit %d and window %v must be positive (window at least 1µs)", limit, window)
	}
	if len(keys) == 0 {
		return nil, errors.New("redis window: no keys")
	}
	w := &Window{conn: conn, keys: keys, limit: limit, window: window, skew: skew, now: time.Now}
	v, err := conn.Do("SCRIPT", "LOAD", WindowScript)
	if err != nil {
		return nil, fmt.Errorf("script load: %w", err)
	}
	sha, ok := v.(string)
	if !ok || len(sha) != 40 {
		return nil, fmt.Errorf("script load: unexpected reply %v", v)
	}
	w.sha = sha
	return w, nil
}

// Allow asks the script for one request of key k, with this client's clock.
func (w *Window) Allow(k int) (bool, error) {
	now := w.now().Add(w.skew).UnixMicro()
	w.strs = [4]string{"EVALSHA", w.sha, "1", w.keys[k]}
	w.ints = [3]int64{w.limit, w.window.Microseconds(), now}
	v, err := w.conn.DoInts(w.strs[:], w.ints[:])
	if err != nil {
		return false, err
	}
	n, ok := v.(int64)
	if !ok {
		return false, fmt.Errorf("evalsha: unexpected reply %v", v)
	}
	return n == 1, nil
}

// String names the script's parameters, for logs.
func (w *Window) String() string {
	return "zset window " + strconv.FormatInt(w.limit, 10) + " per " + w.window.String()
}
