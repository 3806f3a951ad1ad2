package redislua

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Script is the usual Redis token bucket: the caller passes its own clock
// reading `now`, the script refills by the time since the timestamp it
// stored last, caps at the burst, takes the tokens if there are enough, and
// stores the new level with `now` as the timestamp. This is the shape of
// Spring Cloud Gateway's request_rate_limiter.lua and of most blog-post
// token buckets; it is correct only if every client's clock agrees. A client
// whose clock runs behind stores an old timestamp, and the next client whose
// clock runs ahead is credited the whole gap: up to a full burst each time
// the two alternate.
//
//	KEYS[1]  the bucket's hash (fields: tokens, ts)
//	ARGV[1]  rate, tokens per second
//	ARGV[2]  burst, tokens
//	ARGV[3]  now, microseconds (the caller's wall clock)
//	ARGV[4]  tokens requested
//
// It returns 1 if admitted, 0 if not.
const Script = `
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
local requested = tonumber(ARGV[4])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil then
  tokens = burst
  ts = now
end
local elapsed = math.max(0, now - ts)
tokens = math.min(burst, tokens + elapsed * rate / 1000000)
local allowed = 0
if tokens >= requested then
  tokens = tokens - requested
  allowed = 1
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens), 'ts', string.format('%.0f', now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) * 2 + 1000)
return allowed
`

// Bucket calls Script over one connection: one round trip per decision.
// Skew is added to every clock reading it sends, to model a client whose
// wall clock is wrong. A Bucket is not safe for concurrent use.
type Bucket struct {
	conn  *Conn
	sha   string
	keys  []string
	rate  int64 // tokens per second
	burst int64
	skew  time.Duration
	now   func() time.Time
	// replicas, if above 0, is how many replicas each decision waits for
	// (SetWaitReplicas).
	replicas int64

	// The command's arguments, reused per call: EVALSHA sha 1 key, then
	// rate burst now 1.
	strs [4]string
	ints [4]int64
}

// waitCmd is the WAIT command's name, as DoInts takes it.
var waitCmd = []string{"WAIT"}

// SetWaitReplicas makes every Allow, after the script's reply, send WAIT n
// 0: wait, without a timeout, until n replicas have acknowledged the write,
// as a client of a primary with replicas does when an answer must survive
// the primary. n 0 (the default) sends no WAIT.
func (b *Bucket) SetWaitReplicas(n int) { b.replicas = int64(n) }

// NewBucket loads Script on conn (SCRIPT LOAD is idempotent) and returns a
// Bucket over keys, each a token bucket of rate tokens per second and the
// given burst, whose clock reads time.Now() + skew.
func NewBucket(conn *Conn, keys []string, rate, burst int64, skew time.Duration) (*Bucket, error) {
	if rate <= 0 || burst <= 0 {
		return nil, fmt.Errorf("redis bucket: rate %d and burst %d must be positive", rate, burst)
	}
	if len(keys) == 0 {
		return nil, errors.New("redis bucket: no keys")
	}
	b := &Bucket{conn: conn, keys: keys, rate: rate, burst: burst, skew: skew, now: time.Now}
	if err := b.load(); err != nil {
		return nil, err
	}
	return b, nil
}

func (b *Bucket) load() error {
	v, err := b.conn.Do("SCRIPT", "LOAD", Script)
	if err != nil {
		return fmt.Errorf("script load: %w", err)
	}
	sha, ok := v.(string)
	if !ok || len(sha) != 40 {
		return fmt.Errorf("script load: unexpected reply %v", v)
	}
	b.sha = sha
	return nil
}

// Allow asks the script for one token of key k, with this client's clock.
func (b *Bucket) Allow(k int) (bool, error) {
	now := b.now().Add(b.skew).UnixMicro()
	b.strs = [4]string{"EVALSHA", b.sha, "1", b.keys[k]}
	b.ints = [4]int64{b.rate, b.burst, now, 1}
	v, err := b.conn.DoInts(b.strs[:], b.ints[:])
	var rerr Error
	if errors.As(err, &rerr) && len(rerr) >= 8 && rerr[:8] == "NOSCRIPT" {
		// The server lost its script cache (a restart or SCRIPT FLUSH).
		if err := b.load(); err != nil {
			return false, err
		}
		b.strs[1] = b.sha
		v, err = b.conn.DoInts(b.strs[:], b.ints[:])
	}
	if err != nil {
		return false, err
	}
	n, ok := v.(int64)
	if !ok {
		return false, fmt.Errorf("evalsha: unexpected reply %v", v)
	}
	if b.replicas > 0 {
		b.ints[0], b.ints[1] = b.replicas, 0
		w, err := b.conn.DoInts(waitCmd, b.ints[:2])
		if err != nil {
			return false, fmt.Errorf("wait: %w", err)
		}
		if acked, ok := w.(int64); !ok || acked < b.replicas {
			return false, fmt.Errorf("wait %d 0: unexpected reply %v", b.replicas, w)
		}
	}
	return n == 1, nil
}

// Ping checks that the server answers.
func Ping(ctx context.Context, addr string) error {
	c, err := Dial(ctx, addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	v, err := c.Do("PING")
	if err != nil {
		return err
	}
	if v != "PONG" {
		return fmt.Errorf("ping: unexpected reply %v", v)
	}
	return nil
}
