package main

import (
	"context"
	"errors"
	"flag"
	"io"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// helpCommand is a command as its -h is asked for: its name, its args
// before "-h", and the function that runs them.
type helpCommand struct {
	name string
	args []string
	run  func(context.Context, []string, io.Writer) error
}

// helpCommands are the commands whose -h the README's flags are checked
// against.
var helpCommands = []helpCommand{
	{"serve", nil, runServe},
	{"cluster", nil, runCluster},
	{"status", nil, runStatus},
	{"members", nil, runMembers},
	{"remove", nil, runRemove},
	{"limits set", []string{"set"}, runLimits},
	{"limits get", []string{"get"}, runLimits},
	{"limits delete", []string{"delete"}, runLimits},
	{"limits list", []string{"list"}, runLimits},
	{"limits apply", []string{"apply"}, runLimits},
	{"bench", nil, runBench},
	{"bench compare", []string{"compare"}, runBench},
	{"certs ca", []string{"ca"}, runCerts},
	{"certs node", []string{"node"}, runCerts},
	{"certs operator", []string{"operator"}, runCerts},
	{"certs client", []string{"client"}, runCerts},
	{"certs gossip-key", []string{"gossip-key"}, runCerts},
	{"ai-demo", nil, runAIDemo},
	{"version", nil, runVersion},
}

// helpLine is one flag of flag.PrintDefaults: "  -name" and, unless the flag
// is a bool, its argument's name.
var helpLine = regexp.MustCompile(`^  -([a-z0-9-]+)(.*)$`)

// defaultIn is the "(default X)" that flag.PrintDefaults ends a usage with.
var defaultIn = regexp.MustCompile(`\(default ([^()]*)\)$`)

// runHelp runs c with -h and returns what it printed on stdout and on
// stderr. It swaps os.Stderr for a file: it must not run in parallel with
// tests that write there.
func runHelp(t *testing.T, c helpCommand) (stdout, stderr string, err error) {
	t.Helper()
	f, err := os.CreateTemp(t.TempDir(), "help")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out strings.Builder
	saved := os.Stderr
	os.Stderr = f
	err = c.run(t.Context(), append(slices.Clone(c.args), "-h"), &out)
	os.Stderr = saved
	b, rerr := os.ReadFile(f.Name())
	if rerr != nil {
		t.Fatal(rerr)
	}
	return out.String(), string(b), err
}

// commandHelp runs every command with -h and returns, per command, its
// flags and the default each help line states ("" for none).
func commandHelp(t *testing.T) map[string]map[string]string {
	t.Helper()
	out := map[string]map[string]string{}
	for _, c := range helpCommands {
		stdout, stderr, err := runHelp(t, c)
		if !errors.Is(err, flag.ErrHelp) {
			t.Errorf("leasehold %s -h: %v; want flag.ErrHelp (usage printed, exit 0)", c.name, err)
		}
		b := stdout + stderr
		flags := map[string]string{}
		lines := strings.Split(b, "\n")
		for i, line := range lines {
			m := helpLine.FindStringSubmatch(line)
			if m == nil {
				continue
			}
			// A back-quoted word in a usage string becomes the argument's
			// name: serve -h printed "-tls-cert leasehold certs node".
			if arg := strings.TrimSpace(m[2]); strings.Contains(arg, " ") {
				t.Errorf("leasehold %s -h: flag -%s shows %q as its argument (a back-quoted phrase in its usage?)", c.name, m[1], arg)
			}
			def := ""
			if i+1 < len(lines) {
				if d := defaultIn.FindStringSubmatch(strings.TrimSpace(lines[i+1])); d != nil {
					def = strings.Trim(d[1], `"`)
				}
			}
			flags[m[1]] = def
		}
		if len(flags) == 0 && c.name != "version" { // version takes none
			t.Errorf("leasehold %s -h listed no flags:\n%s", c.name, b)
		}
		out[c.name] = flags
	}
	return out
}

// readmeCommands returns the leasehold command lines of the README: its sh
// blocks (continuation lines joined, comments cut) and its inline code
// that starts with a command.
func readmeCommands(t *testing.T, readme string) []string {
	t.Helper()
	var cmds []string
	inSh := false
	var cur strings.Builder
	for line := range strings.SplitSeq(readme, "\n") {
		switch {
		case strings.HasPrefix(line, "```sh"):
			inSh = true
			continue
		case strings.HasPrefix(line, "```"):
			inSh = false
			continue
		case !inSh:
			continue
		}
		if strings.HasPrefix(strings.TrimSpace(line), "#") {
			continue // a comment: what the command printed
		}
		if i := strings.Index(line, " #"); i >= 0 {
			line = line[:i]
		}
		if s, ok := strings.CutSuffix(strings.TrimSpace(line), `\`); ok {
			cur.WriteString(s + " ")
			continue
		}
		cur.WriteString(line)
		cmds = append(cmds, cur.String())
		cur.Reset()
	}
	for _, m := range regexp.MustCompile("`((?:bin/)?leasehold [^`]*|serve --[^`]*)`").FindAllStringSubmatch(readme, -1) {
		cmds = append(cmds, m[1])
	}
	return cmds
}

// TestReadmeFlagsExist: every flag the README gives a leasehold command, in
// its shell blocks and inline, is one that command defines; every flag it
// names anywhere is defined by some command (or is another tool's); and the
// defaults it states are the flags' defaults.
func TestReadmeFlagsExist(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	readme := string(b)
	help := commandHelp(t)

	checked := 0
	for _, line := range readmeCommands(t, readme) {
		words := strings.Fields(line)
		for i := 0; i < len(words); i++ {
			w := words[i]
			var cmd string
			switch {
			case w == "serve" && i == 0:
				cmd = "serve"
				i--
			case w == "leasehold" || w == "bin/leasehold":
				if i+1 >= len(words) {
					continue
				}
				cmd = words[i+1]
				if i+2 < len(words) {
					if _, ok := help[cmd+" "+words[i+2]]; ok {
						cmd += " " + words[i+2]
						i++
					}
				}
			default:
				continue
			}
			if _, ok := help[cmd]; !ok {
				if cmd == "limits" || cmd == "certs" || !regexp.MustCompile(`^[a-z][a-z-]*$`).MatchString(cmd) {
					continue // the command as a whole, or prose ("<pid of leasehold cluster>")
				}
				t.Errorf("README: %q runs leasehold %s, which is no command", line, cmd)
				continue
			}
			flags := help[cmd]
			for i += 2; i < len(words); i++ {
				w := words[i]
				if w == "|" || w == ";" || w == "&&" || w == "&" {
					break
				}
				if w == "--" && cmd == "cluster" {
					flags = help["serve"] // serve flags for every node
					continue
				}
				name, ok := strings.CutPrefix(w, "--")
				if !ok || name == "" {
					continue
				}
				name, _, _ = strings.Cut(name, "=")
				name = strings.TrimRight(name, ",.;:)")
				checked++
				if _, ok := flags[name]; !ok {
					t.Errorf("README: %q passes --%s, which leasehold %s does not define", line, name, cmd)
				}
			}
		}
	}
	if checked < 50 {
		t.Errorf("checked %d flags of the README's commands; did the parsing break?", checked)
	}

	// Every flag named anywhere in inline code or a block.
	others := map[string]string{
		"save": "redis-server", "appendonly": "redis-server", "appendfsync": "redis-server",
		"help": "every command (the flag package)", "cacert": "curl", "time": "cmd/jepsen", "seed": "cmd/jepsen", "nemesis": "cmd/jepsen",
	}
	for _, m := range regexp.MustCompile("(?:^|[\\s`(=])--([a-z][a-z0-9-]*)").FindAllStringSubmatch(readme, -1) {
		name := m[1]
		if _, ok := others[name]; ok {
			continue
		}
		found := false
		for _, flags := range help {
			if _, ok := flags[name]; ok {
				found = true
				break
			}
		}
		if !found {
			t.Errorf("README names --%s, which no leasehold command defines", name)
		}
	}

	// The defaults the README states, each where it states it.
	flat := strings.Join(strings.Fields(readme), " ")
	for _, c := range []struct{ cmd, flag, def, says string }{
		{"serve", "server-stabilization-time", "10s", "`--server-stabilization-time` (10 s)"},
		{"serve", "dead-server-timeout", "24h0m0s", "`--dead-server-timeout` (24 h)"},
		{"serve", "max-in-flight", "8192", "`--max-in-flight` requests (default 8192)"},
		{"serve", "client-inline-limits", "true", "serve's flag of that name, default `true`"},
		{"limits set", "max-debt", "0: no debt", "(default 0, no debt"},
		{"limits set", "max-lease", "2s, at most 1m", "Λ is the key's `MaxLease` (default 2 s)"},
		{"bench", "rate", "1000", "`leasehold bench` defaults to 1000/s"},
		{"bench compare", "rate", "500", "The hot key refills at 500/s (`bench compare`'s default"},
		{"bench", "slots", "10", "in `--slots` slots (default 10)"},
		{"bench compare", "window-duration", "10s", "(`--window-duration`, default 10 s;"},
		{"bench compare", "window", "1s", "`--window`, default 1 s;"},
		{"bench compare", "round-trip-concurrency", "64", "with 64 (`--round-trip-concurrency`; `×64` in the table)"},
		{"ai-demo", "duration", "20s", "Each row starts with the provider's token bucket empty and runs 20 s"},
		{"ai-demo", "workers", "4", "then 4 worker processes × 16 goroutines"},
		{"ai-demo", "goroutines", "16", "then 4 worker processes × 16 goroutines"},
		{"cluster", "dir", "./data", "data in `./data`"},
		{"certs node", "days", "365", "Certificates last a year and the CA five (`--days`)"},
		{"certs ca", "days", "1825", "Certificates last a year and the CA five (`--days`)"},
	} {
		if !strings.Contains(flat, c.says) {
			t.Errorf("README no longer says %q (about leasehold %s --%s); update this test with it", c.says, c.cmd, c.flag)
		}
		if got, ok := help[c.cmd][c.flag]; !ok || got != c.def {
			t.Errorf("leasehold %s --%s: default %q (defined %v); the README says %q", c.cmd, c.flag, got, ok, c.says)
		}
	}
}
