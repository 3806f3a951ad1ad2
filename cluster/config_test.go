package cluster

import (
	"errors"
	"net"
	"strings"
	"testing"
	"time"
)

func validConfig() Config {
	c := DefaultConfig()
	c.ID, c.Dir, c.RaftAddr = "n1", "/tmp/leasehold-n1", "127.0.0.1:7201"
	c.Peers = []Peer{{"n1", "127.0.0.1:7201"}, {"n2", "127.0.0.1:7202"}, {"n3", "127.0.0.1:7203"}}
	return c
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name   string
		modify func(*Config)
		want   []string // substrings, one per expected problem; none means valid
	}{
		{"default with identity", func(*Config) {}, nil},
		{"zero durations mean defaults", func(c *Config) {
			c.ApplyTimeout, c.HeartbeatTimeout, c.ElectionTimeout, c.LeaderLeaseTimeout = 0, 0, 0, 0
			c.CommitTimeout, c.SnapshotInterval, c.SnapshotThreshold, c.TrailingLogs = 0, 0, 0, 0
		}, nil},
		{"everything missing", func(c *Config) { *c = Config{} },
			[]string{"ID is empty", "Dir is empty", "RaftAddr is empty", "Peers is empty"}},
		{"unspecified address", func(c *Config) { c.RaftAddr = "0.0.0.0:7201" },
			[]string{"unspecified address", "Peers lists this node"}},
		{"no port", func(c *Config) { c.RaftAddr = "127.0.0.1:0" }, []string{"no port", "Peers lists this node"}},
		{"peers", func(c *Config) {
			c.Peers = []Peer{{"n2", "127.0.0.1:7202"}, {"n2", "127.0.0.1:7203"}, {"", "127.0.0.1:7202"}, {"n4", "nope"}}
		}, []string{"ID \"n2\" is listed twice", "empty ID", "listed twice", "missing port", "does not list this node"}},
		{"timings", func(c *Config) {
			c.ApplyTimeout = -time.Second
			c.HeartbeatTimeout = time.Millisecond
			c.ElectionTimeout = 500 * time.Microsecond
			c.LeaderLeaseTimeout = time.Second
		}, []string{"ApplyTimeout is -1s", "HeartbeatTimeout is 1ms", "ElectionTimeout is 500µs",
			"LeaderLeaseTimeout 1s is above", "ElectionTimeout 500µs is below"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := validConfig()
			tt.modify(&c)
			err := c.Validate()
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("Validate() = %v; want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate() = nil; want %d problems", len(tt.want))
			}
			var joined interface{ Unwrap() []error }
			if !errors.As(err, &joined) || len(joined.Unwrap()) != len(tt.want) {
				t.Errorf("Validate() reported:\n%v\nwant %d problems", err, len(tt.want))
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Validate() = %v\nwant a problem mentioning %q", err, w)
				}
			}
		})
	}
}

// TestConfigListener: with a Listener, RaftAddr may be empty and the
// listener's address is advertised.
func TestConfigListener(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c := validConfig()
	c.RaftAddr = ""
	c.Listener = ln
	c.Peers[0].RaftAddr = ln.Addr().String()
	if err := c.Validate(); err != nil {
		t.Fatalf("Validate() = %v", err)
	}
	if got := c.advertiseAddr(); got != ln.Addr().String() {
		t.Errorf("advertiseAddr() = %q; want %q", got, ln.Addr())
	}
}

func TestWithDefaults(t *testing.T) {
	c := Config{ElectionTimeout: time.Second, MaxSessions: 7}.withDefaults()
	if c.ElectionTimeout != time.Second || c.HeartbeatTimeout != DefaultHeartbeatTimeout ||
		c.Logger == nil || c.Monotonic == nil || c.TrailingLogs != DefaultTrailingLogs ||
		c.MaxKeys != DefaultMaxKeys || c.MaxSessions != 7 {
		t.Errorf("withDefaults() = %+v", c)
	}
	if a, b := c.Monotonic(), c.Monotonic(); b < a {
		t.Errorf("default Monotonic went back: %v then %v", a, b)
	}
}
