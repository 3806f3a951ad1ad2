package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"github.com/leasehold/leasehold/internal/ratelog"
)

// levelTrace is the slog level of hclog's Trace, one step below Debug.
const levelTrace = slog.LevelDebug - 4

// hclogAdapter is an hclog.Logger that writes to a *slog.Logger, so
// hashicorp/raft logs where the rest of the node does. Levels map one to one
// (Trace is slog.LevelDebug-4); key/value pairs pass through as slog
// attributes; the name set by Named goes in a "logger" attribute. It is safe
// for concurrent use.
type hclogAdapter struct {
	base    *slog.Logger // without the implied args
	logger  *slog.Logger // base.With(implied...)
	name    string
	implied []any
	// level is a floor set by SetLevel, shared with every logger derived
	// from this one as hclog does; hclog.NoLevel defers to the handler.
	level *atomic.Int32
}

var _ hclog.Logger = (*hclogAdapter)(nil)

// newHCLog returns an hclog.Logger that writes to l under name.
func newHCLog(l *slog.Logger, name string) hclog.Logger {
	return &hclogAdapter{base: l, logger: l, name: name, level: new(atomic.Int32)}
}

// slogLevel maps an hclog level to a slog level; ok is false for Off.
func slogLevel(l hclog.Level) (level slog.Level, ok bool) {
	switch l {
	case hclog.Trace:
		return levelTrace, true
	case hclog.Debug:
		return slog.LevelDebug, true
	case hclog.Info, hclog.NoLevel:
		return slog.LevelInfo, true
	case hclog.Warn:
		return slog.LevelWarn, true
	case hclog.Error:
		return slog.LevelError, true
	}
	return 0, false
}

func (a *hclogAdapter) enabled(l hclog.Level) bool {
	if floor := hclog.Level(a.level.Load()); floor != hclog.NoLevel && l < floor {
		return false
	}
	level, ok := slogLevel(l)
	return ok && a.logger.Enabled(context.Background(), level)
}

// Log writes msg at level with args as key/value pairs. An error about a
// connection or listener this process closed itself is logged at Debug
// (ownClose).
func (a *hclogAdapter) Log(level hclog.Level, msg string, args ...any) {
	if level > hclog.Debug && slices.ContainsFunc(args, ownClose) {
		level = hclog.Debug
	}
	if !a.enabled(level) {
		return
	}
	sl, _ := slogLevel(level)
	attrs := make([]any, 0, len(args)+2)
	if a.name != "" {
		attrs = append(attrs, "logger", a.name)
	}
	for _, v := range args {
		attrs = append(attrs, convertHCLogValue(v))
	}
	a.logger.Log(context.Background(), sl, msg, attrs...)
}

// closedConnText is what net.ErrClosed says, as it reaches a log line
// through errors that do not wrap it (raft's decoder, memberlist's text).
var closedConnText = net.ErrClosed.Error()

// ownClose reports whether v is an error of an I/O call on a connection or
// listener this process had closed (net.ErrClosed: "use of closed network
// connection"; not a peer's close, which is EOF or a reset). raft's
// transport logs them at ERROR as a node closes (its accept loop, each
// connection's reader), and memberlist as it shuts down: expected on every
// clean shutdown and leave (TestCleanShutdownLogsNoError), and nothing an
// operator can act on. raft.ErrTransportShutdown is the same: a reader of
// raft's transport that this node shut down while it waited.
func ownClose(v any) bool {
	err, ok := v.(error)
	return ok && err != nil && (errors.Is(err, net.ErrClosed) || errors.Is(err, raft.ErrTransportShutdown) ||
		strings.Contains(err.Error(), closedConnText))
}

// convertHCLogValue renders hclog's formatting value types the way hclog
// would; everything else passes through for slog to format.
func convertHCLogValue(v any) any {
	switch v := v.(type) {
	case hclog.Format:
		if len(v) > 0 {
			if format, ok := v[0].(string); ok {
				return fmt.Sprintf(format, v[1:]...)
			}
		}
		return fmt.Sprint(v...)
	case hclog.Hex:
		return fmt.Sprintf("0x%x", int(v))
	case hclog.Octal:
		return fmt.Sprintf("0%o", int(v))
	case hclog.Quote:
		return fmt.Sprintf("%q", string(v))
	}
	return v
}

func (a *hclogAdapter) Trace(msg string, args ...any) { a.Log(hclog.Trace, msg, args...) }
func (a *hclogAdapter) Debug(msg string, args ...any) { a.Log(hclog.Debug, msg, args...) }
func (a *hclogAdapter) Info(msg string, args ...any)  { a.Log(hclog.Info, msg, args...) }
func (a *hclogAdapter) Warn(msg string, args ...any)  { a.Log(hclog.Warn, msg, args...) }
func (a *hclogAdapter) Error(msg string, args ...any) { a.Log(hclog.Error, msg, args...) }

func (a *hclogAdapter) IsTrace() bool { return a.enabled(hclog.Trace) }
func (a *hclogAdapter) IsDebug() bool { return a.enabled(hclog.Debug) }
func (a *hclogAdapter) IsInfo() bool  { return a.enabled(hclog.Info) }
func (a *hclogAdapter) IsWarn() bool  { return a.enabled(hclog.Warn) }
func (a *hclogAdapter) IsError() bool { return a.enabled(hclog.Error) }

// ImpliedArgs returns the key/value pairs added by With.
func (a *hclogAdapter) ImpliedArgs() []any { return a.implied }

// With returns a logger that adds args to every message.
func (a *hclogAdapter) With(args ...any) hclog.Logger {
	c := *a
	c.implied = append(a.implied[:len(a.implied):len(a.implied)], args...)
	converted := make([]any, len(c.implied))
	for i, v := range c.implied {
		converted[i] = convertHCLogValue(v)
	}
	c.logger = a.base.With(converted...)
	return &c
}

// Name returns the logger's name.
func (a *hclogAdapter) Name() string { return a.name }

// Named returns a logger whose name is this one's with name appended.
func (a *hclogAdapter) Named(name string) hclog.Logger {
	c := *a
	if a.name != "" {
		c.name = a.name + "." + name
	} else {
		c.name = name
	}
	return &c
}

// ResetNamed returns a logger named name.
func (a *hclogAdapter) ResetNamed(name string) hclog.Logger {
	c := *a
	c.name = name
	return &c
}

// SetLevel sets a floor below which nothing is logged, on top of what the
// slog handler enables; hclog.NoLevel removes it.
func (a *hclogAdapter) SetLevel(level hclog.Level) { a.level.Store(int32(level)) }

// GetLevel returns the lowest level that is logged.
func (a *hclogAdapter) GetLevel() hclog.Level {
	for _, l := range []hclog.Level{hclog.Trace, hclog.Debug, hclog.Info, hclog.Warn, hclog.Error} {
		if a.enabled(l) {
			return l
		}
	}
	return hclog.Off
}

// StandardLogger returns a *log.Logger that writes each line at Info, or at
// opts.ForceLevel if set, or, with opts.InferLevels, at the level its
// "[DEBUG]", "[INFO]", "[WARN]", "[ERR]" or "[ERROR]" prefix names (the
// prefix removed), as memberlist writes them.
func (a *hclogAdapter) StandardLogger(opts *hclog.StandardLoggerOptions) *log.Logger {
	level := slog.LevelInfo
	if opts != nil && opts.ForceLevel != hclog.NoLevel {
		if l, ok := slogLevel(opts.ForceLevel); ok {
			level = l
		}
	}
	l := a.logger
	if a.name != "" {
		l = l.With("logger", a.name)
	}
	if opts != nil && opts.InferLevels && opts.ForceLevel == hclog.NoLevel {
		return log.New(&inferringWriter{logger: l, fallback: level, rl: ratelog.New(time.Second, 20)}, "", 0)
	}
	return slog.NewLogLogger(l.Handler(), level)
}

// inferringWriter logs each line written at the level its prefix names.
// memberlist logs a "[DEBUG]" line for every gossip connection accepted;
// logged at Info, they were half of an idle node's log, and every TCP
// connection anyone opened to the gossip port added one, while its "[ERR]"
// lines (out of file descriptors, ...) were Info too
// (TestStandardLoggerInfersLevels). Its warnings and errors go through a
// rate limit (20 at once, then one a second, counting the ones left out):
// memberlist logs an "[ERR]" line for every connection that sends it
// bytes it cannot read, and anyone who reaches the port can open those.
type inferringWriter struct {
	logger   *slog.Logger
	fallback slog.Level
	rl       *ratelog.Limiter
}

var inferredLevels = []struct {
	prefix string
	level  slog.Level
}{
	{"[TRACE]", levelTrace}, {"[DEBUG]", slog.LevelDebug}, {"[INFO]", slog.LevelInfo},
	{"[WARN]", slog.LevelWarn}, {"[ERR]", slog.LevelError}, {"[ERROR]", slog.LevelError},
}

func (w *inferringWriter) Write(p []byte) (int, error) {
	line := strings.TrimRight(string(p), "\n")
	level := w.fallback
	for _, l := range inferredLevels {
		if rest, ok := strings.CutPrefix(line, l.prefix); ok {
			line, level = strings.TrimSpace(rest), l.level
			break
		}
	}
	if level > slog.LevelDebug && strings.Contains(line, closedConnText) {
		level = slog.LevelDebug // ownClose
	}
	if level == slog.LevelError && strings.HasPrefix(line, conflictText) {
		level = slog.LevelWarn
	}
	if level >= slog.LevelWarn {
		w.rl.Log(w.logger, level, line)
	} else {
		w.logger.Log(context.Background(), level, line)
	}
	return len(p), nil
}

// conflictText begins the "[ERR]" line memberlist logs for every alive
// message it refuses because the member's name is held at another address
// that is not yet dead: a node that moved, until its old address is
// declared dead (seconds), once for each such message. The conflict is
// handled (gossip.NotifyConflict takes the new address as a claim and
// routes proves it), so it is a warning, not an error to page on.
const conflictText = "memberlist: Conflicting address for "

// StandardWriter returns a writer whose lines are logged as StandardLogger
// logs them.
func (a *hclogAdapter) StandardWriter(opts *hclog.StandardLoggerOptions) io.Writer {
	return a.StandardLogger(opts).Writer()
}
