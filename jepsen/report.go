//go:build unix

package jepsen

import (
	"bufio"
	"cmp"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"strings"
	"time"
)

// MergeHistories reads the history files at paths (each in any order),
// sorts all their events by time — stably, so ties keep the order of paths
// and of lines within a file — and writes them as JSON lines to out. It
// returns the merged events. A file that ends in a torn line (its process
// died mid-write) keeps the events before it; the problem is returned along
// with them, joined for every such file.
func MergeHistories(paths []string, out io.Writer) ([]Event, error) {
	var all []Event
	var problems []error
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			problems = append(problems, err)
			continue
		}
		events, err := ReadHistory(f)
		f.Close()
		if err != nil {
			problems = append(problems, fmt.Errorf("%s: %w", p, err))
		}
		all = append(all, events...)
	}
	slices.SortStableFunc(all, func(a, b Event) int { return cmp.Compare(a.Time, b.Time) })
	w := NewHistoryWriter(out)
	for _, e := range all {
		if err := w.Write(e); err != nil {
			return all, err
		}
	}
	if err := w.Flush(); err != nil {
		return all, err
	}
	return all, errors.Join(problems...)
}

// faultSpan is one fault's interval for the plot: from the fault's invoke to
// its heal's completion (or the end of the history if it never healed).
type faultSpan struct {
	op, healOp string // kill and restart, pause and resume, ...
	label      string // the targets
	from, to   int64
}

// faultHeals maps each nemesis fault op to the op that heals it.
var faultHeals = map[string]string{OpKill: OpRestart, OpPause: OpResume, OpPartition: OpHeal, OpClock: OpHeal}

// faultSpans pairs each nemesis fault with the completion of the heal that
// follows it on the same targets.
func faultSpans(events []Event) []faultSpan {
	var spans []faultSpan
	open := map[string]int{} // label -> index in spans of a fault not yet healed
	var last int64
	for _, e := range events {
		last = max(last, e.Time)
		if e.Process != ProcessNemesis {
			continue
		}
		label, _, _ := strings.Cut(e.Value, ": ") // an info's Value appends the errors
		if heal, ok := faultHeals[e.Op]; ok && e.Type == Invoke {
			open[label] = len(spans)
			spans = append(spans, faultSpan{op: e.Op, healOp: heal, label: label, from: e.Time, to: -1})
			continue
		}
		// A member-replace's kill is healed by the dead node's leave.
		if i, ok := open[label]; ok && e.Type != Invoke && (spans[i].healOp == e.Op || (e.Op == OpLeave && spans[i].op == OpKill)) {
			spans[i].to = e.Time
			delete(open, label)
		}
	}
	for i := range spans {
		if spans[i].to < 0 {
			spans[i].to = last
		}
	}
	return spans
}

// Plot geometry, in SVG user units.
const (
	plotWidth   = 1000
	panelHeight = 170
	plotLeft    = 70
	plotRight   = 20
	plotTop     = 65
	panelGap    = 45
)

// WritePlot writes an SVG of each key's admitted rate (tokens per second,
// from the ok allows) and granted rate (from the ok grants) over the run,
// against the key's limit, with the nemesis' fault intervals shaded: the
// first thing to look at after a run. keys fixes the panels and their
// order; title heads the picture and subtitle, if any, goes below it.
func WritePlot(w io.Writer, events []Event, keys []KeySpec, title, subtitle string) error {
	var t0, t1 int64 = math.MaxInt64, math.MinInt64
	for _, e := range events {
		t0, t1 = min(t0, e.Time), max(t1, e.Time)
	}
	if len(events) == 0 {
		t0, t1 = 0, int64(time.Second)
	}
	span := max(t1-t0, int64(time.Second))
	bin := int64(time.Second)
	if span < int64(20*time.Second) {
		bin = int64(250 * time.Millisecond)
	}
	nbins := max(int(span/bin), 1) // a partial last bin would look like a drop

	admitted := map[string][]float64{}
	granted := map[string][]float64{}
	for _, k := range keys {
		admitted[k.Key] = make([]float64, nbins)
		granted[k.Key] = make([]float64, nbins)
	}
	perSecond := float64(time.Second) / float64(bin)
	for _, e := range events {
		if e.Type != OK {
			continue
		}
		var series map[string][]float64
		switch e.Op {
		case OpAllow:
			series = admitted
		case OpGrant:
			series = granted
		default:
			continue
		}
		s, ok := series[e.Key]
		if !ok {
			continue
		}
		n := e.N
		if n == 0 && e.Op == OpAllow {
			n = 1
		}
		if i := int((e.Time - t0) / bin); i < nbins {
			s[i] += float64(n) * perSecond
		}
	}
	spans := faultSpans(events)

	height := plotTop + len(keys)*(panelHeight+panelGap) + 10
	inner := float64(plotWidth - plotLeft - plotRight)
	xOf := func(t int64) float64 { return plotLeft + inner*float64(t-t0)/float64(span) }

	bw := bufio.NewWriter(w)
	p := func(format string, args ...any) { fmt.Fprintf(bw, format, args...) }
	p(`<?xml version="1.0" encoding="UTF-8"?>` + "\n")
	p(`<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n",
		plotWidth, height, plotWidth, height)
	p("<title>%s</title>\n", esc(title))
	p(`<style>
.admitted{fill:none;stroke:#1f77b4;stroke-width:1.5}
.granted{fill:none;stroke:#7f7f7f;stroke-width:1;stroke-dasharray:3 2}
.limit{stroke:#d62728;stroke-width:1.5;stroke-dasharray:6 3}
.fault-kill{fill:#d62728;fill-opacity:0.15}
.fault-pause{fill:#ff7f0e;fill-opacity:0.18}
.fault-partition{fill:#1f77b4;fill-opacity:0.15}
.fault-clock{fill:#2ca02c;fill-opacity:0.15}
.fault-other{fill:#9467bd;fill-opacity:0.15}
.axis{stroke:#333;stroke-width:1}
.grid{stroke:#ddd;stroke-width:0.5}
</style>
`)
	p(`<rect width="100%%" height="100%%" fill="white"/>`)
	p("\n<text x=\"%d\" y=\"20\" font-size=\"15\" font-weight=\"bold\">%s</text>\n", plotLeft, esc(title))
	if subtitle != "" {
		p(`<text x="%d" y="36" fill="#333">%s</text>`+"\n", plotLeft, esc(subtitle))
	}
	p(`<text x="%d" y="52" fill="#555">admitted/s (blue), granted/s (grey, dashed), limit/s (red, dashed); shaded: kill (red), pause (orange)</text>`+"\n", plotLeft)

	for i, k := range keys {
		top := float64(plotTop + i*(panelHeight+panelGap) + 15)
		bottom := top + panelHeight
		limit := float64(k.Limit) / k.Period.Seconds()
		ymax := limit * 1.5
		for _, v := range admitted[k.Key] {
			ymax = max(ymax, v*1.1)
		}
		ymax = niceCeil(ymax)
		yOf := func(v float64) float64 { return bottom - panelHeight*v/ymax }

		p(`<g class="panel" id="panel-%s">`+"\n", esc(k.Key))
		desc := fmt.Sprintf("%s: %s %d per %v", k.Key, k.Algorithm, k.Limit, k.Period)
		if k.Algorithm == AlgorithmTokenBucket {
			desc += fmt.Sprintf(", burst %d", k.Normalize().Burst)
			if k.Strict {
				desc += ", strict"
			}
		}
		desc += fmt.Sprintf(", max lease %v", k.Normalize().MaxLease)
		p(`<text x="%d" y="%.1f" font-weight="bold">%s</text>`+"\n", plotLeft, top-5, esc(desc))
		for _, s := range spans {
			class := "fault-other"
			switch s.op {
			case OpKill:
				class = "fault-kill"
			case OpPause:
				class = "fault-pause"
			case OpPartition:
				class = "fault-partition"
			case OpClock:
				class = "fault-clock"
			}
			x0, x1 := xOf(s.from), xOf(s.to)
			p(`<rect class="%s" x="%.1f" y="%.1f" width="%.1f" height="%d"><title>%s %s</title></rect>`+"\n",
				class, x0, top, max(x1-x0, 1), panelHeight, esc(s.op), esc(s.label))
			if i == 0 {
				p(`<text x="%.1f" y="%.1f" font-size="10" fill="#555">%s %s</text>`+"\n", x0+2, top+11, esc(s.op), esc(s.label))
			}
		}
		for _, v := range yTicks(ymax) {
			y := yOf(v)
			p(`<line class="grid" x1="%d" y1="%.1f" x2="%d" y2="%.1f"/>`, plotLeft, y, plotWidth-plotRight, y)
			p(`<text x="%d" y="%.1f" text-anchor="end">%s</text>`+"\n", plotLeft-5, y+4, fmtTick(v))
		}
		p(`<line class="axis" x1="%d" y1="%.1f" x2="%d" y2="%.1f"/>`, plotLeft, bottom, plotWidth-plotRight, bottom)
		p(`<line class="axis" x1="%d" y1="%.1f" x2="%d" y2="%.1f"/>`+"\n", plotLeft, top, plotLeft, bottom)
		for s := int64(0); s <= span/int64(time.Second); s += tickStep(span) {
			x := xOf(t0 + s*int64(time.Second))
			p(`<line class="axis" x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f"/>`, x, bottom, x, bottom+4)
			p(`<text x="%.1f" y="%.1f" text-anchor="middle">%ds</text>`+"\n", x, bottom+16, s)
		}
		p(`<path class="granted" d="%s"/>`+"\n", stepPath(granted[k.Key], t0, bin, xOf, yOf))
		p(`<path class="admitted" d="%s"/>`+"\n", stepPath(admitted[k.Key], t0, bin, xOf, yOf))
		p(`<line class="limit" x1="%d" y1="%.1f" x2="%d" y2="%.1f"><title>limit %s/s</title></line>`+"\n",
			plotLeft, yOf(limit), plotWidth-plotRight, yOf(limit), fmtTick(limit))
		p("</g>\n")
	}
	p("</svg>\n")
	return bw.Flush()
}

// stepPath returns an SVG path drawing bins as a step function.
func stepPath(bins []float64, t0, bin int64, xOf func(int64) float64, yOf func(float64) float64) string {
	var b strings.Builder
	for i, v := range bins {
		x0, x1, y := xOf(t0+int64(i)*bin), xOf(t0+int64(i+1)*bin), yOf(v)
		if i == 0 {
			fmt.Fprintf(&b, "M%.1f %.1f", x0, y)
		} else {
			fmt.Fprintf(&b, "L%.1f %.1f", x0, y)
		}
		fmt.Fprintf(&b, "L%.1f %.1f", x1, y)
	}
	return b.String()
}

// niceCeil rounds v up to 1, 2 or 5 times a power of ten.
func niceCeil(v float64) float64 {
	if v <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5, 10} {
		if v <= m*p {
			return m * p
		}
	}
	return 10 * p
}

// yTicks returns ticks from 0 to at most ymax in steps of 1, 2 or 5 times
// a power of ten, three to five of them.
func yTicks(ymax float64) []float64 {
	step := niceCeil(ymax / 4)
	var out []float64
	for i := 0; i < 10 && float64(i)*step <= ymax*(1+1e-9); i++ {
		out = append(out, float64(i)*step)
	}
	return out
}

// tickStep returns the seconds between x-axis ticks for a span in ns.
func tickStep(span int64) int64 {
	s := span / int64(time.Second)
	switch {
	case s <= 20:
		return 2
	case s <= 60:
		return 5
	case s <= 300:
		return 30
	}
	return max(60, s/10/60*60)
}

func fmtTick(v float64) string {
	if v == math.Trunc(v) {
		return fmt.Sprintf("%.0f", v)
	}
	return fmt.Sprintf("%.1f", v)
}

// esc escapes s for XML text and attribute values.
func esc(s string) string {
	var b strings.Builder
	_ = xml.EscapeText(&b, []byte(s))
	return b.String()
}
