package ratelog

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"testing/synctest"
	"time"
)

func TestLimiterLogsABurstThenCountsWhatItLeftOut(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var buf bytes.Buffer
		log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{
			ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
				if a.Key == slog.TimeKey {
					return slog.Attr{}
				}
				return a
			}}))
		l := New(time.Second, 3)
		for range 1000 {
			l.Log(log, slog.LevelWarn, "shed")
		}
		if n := strings.Count(buf.String(), "shed"); n != 3 {
			t.Fatalf("a flood of 1000 logged %d lines; want the burst of 3:\n%s", n, buf.String())
		}
		time.Sleep(time.Second) // fake time: the bucket refills one line
		buf.Reset()
		l.Log(log, slog.LevelWarn, "shed", "total", 1001)
		if got, want := strings.TrimSpace(buf.String()), "level=WARN msg=shed total=1001 suppressed=997"; got != want {
			t.Fatalf("line after the flood = %q; want %q", got, want)
		}
	})
}
