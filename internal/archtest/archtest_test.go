package archtest

import (
	"bufio"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// modulePath is the module whose source these tests check; go.mod must declare it.
const modulePath = "github.com/leasehold/leasehold"

// importRule forbids files under one package subtree from importing a path prefix.
type importRule struct {
	// dir is a slash-separated directory relative to the module root; the rule
	// applies to every file in it and in its subdirectories.
	dir string
	// forbidden is an import path prefix, matched at path-element boundaries: a
	// prefix ending in "/" matches any path that starts with it; any other prefix
	// matches itself and the paths below it.
	forbidden string
	// except lists path prefixes that stay allowed although forbidden matches them.
	except []string
	// exceptDirs lists directories below dir (and their subdirectories) the
	// rule does not apply to.
	exceptDirs []string
	// why is the reason, quoted in the failure message.
	why string
}

// importRules is the import-direction table of STYLE.md and DESIGN.md
// ("Imports point one way"). Rows for packages that do not exist yet cost nothing.
var importRules = []importRule{
	{dir: "limiter", forbidden: modulePath + "/", except: []string{modulePath + "/limiter"},
		why: "limiter imports nothing from this module"},

	{dir: "fsm", forbidden: modulePath + "/", except: []string{modulePath + "/fsm", modulePath + "/limiter"},
		why: "fsm may import only limiter from this module"},
	{dir: "fsm", forbidden: "github.com/hashicorp/",
		why: "fsm never imports hashicorp; the raft.FSM adapter lives in cluster"},

	{dir: "internal/pki", forbidden: modulePath + "/", except: []string{modulePath + "/internal/pki"},
		why: "pki is certificates only: every part of the module may use it"},

	{dir: "transport", forbidden: modulePath + "/cluster", why: "transport must not import cluster"},
	{dir: "transport", forbidden: modulePath + "/fsm", why: "transport must not import fsm"},

	{dir: "client", forbidden: modulePath + "/cluster", why: "a user's binary must not pull in a Raft server"},
	{dir: "client", forbidden: modulePath + "/fsm", why: "a user's binary must not pull in a Raft server"},
	{dir: "client", forbidden: "github.com/hashicorp/", why: "a user's binary must not pull in a Raft server"},
	{dir: "client", forbidden: "go.etcd.io/bbolt", why: "a user's binary must not pull in a Raft server"},
	// The provider SDKs are the guard's test callers, never the SDK's
	// dependencies (test files are not checked, so guard tests may use them).
	{dir: "client", forbidden: "github.com/openai/", why: "provider SDKs are test-only callers of client/guard"},
	{dir: "client", forbidden: "github.com/anthropics/", why: "provider SDKs are test-only callers of client/guard"},
	{dir: "client", forbidden: modulePath + "/internal/fakeprovider", why: "a user's binary must not pull in the fake provider"},
	// Prometheus is the optional collector's alone: a program that does not
	// register it does not link client_golang.
	{dir: "client", forbidden: "github.com/prometheus/", exceptDirs: []string{"client/promcollector"},
		why: "only client/promcollector imports Prometheus"},

	{dir: "cluster", forbidden: modulePath + "/client", why: "cluster must not import client"},
	{dir: "cluster", forbidden: modulePath + "/cmd", why: "cluster must not import cmd"},

	{dir: "jepsen", forbidden: modulePath + "/limiter", why: "jepsen never uses limiter as its oracle"},
	{dir: "jepsen", forbidden: modulePath + "/fsm", why: "jepsen never uses fsm as its oracle"},
	// cmd/jepsen is the chaos runner; the harness's rule holds for it too.
	{dir: "cmd/jepsen", forbidden: modulePath + "/limiter", why: "jepsen never uses limiter as its oracle"},
	{dir: "cmd/jepsen", forbidden: modulePath + "/fsm", why: "jepsen never uses fsm as its oracle"},
}

// pureDirs are the package subtrees that must stay free of clocks, randomness,
// the operating system and goroutines.
var pureDirs = []string{"limiter", "fsm"}

// forbiddenTimeFuncs are the package time identifiers that read the clock, sleep
// or start a timer. Types and pure constructors (time.Duration, time.Unix) stay
// allowed.
var forbiddenTimeFuncs = map[string]bool{
	"Now":       true,
	"Since":     true,
	"Until":     true,
	"Sleep":     true,
	"After":     true,
	"AfterFunc": true,
	"NewTimer":  true,
	"NewTicker": true,
	"Tick":      true,
}

// forbiddenPureImports are import path prefixes a pure package must not use:
// nondeterministic randomness and the operating system.
var forbiddenPureImports = []string{"math/rand", "crypto/rand", "os"}

// violation is one rule broken at one place in a source file.
type violation struct {
	pos token.Position
	msg string
}

// String formats v as "file:line: message", the form failure messages use.
func (v violation) String() string {
	return fmt.Sprintf("%s:%d: %s", v.pos.Filename, v.pos.Line, v.msg)
}

// hasPathPrefix reports whether import path p matches prefix at a path-element
// boundary (see importRule.forbidden).
func hasPathPrefix(p, prefix string) bool {
	if strings.HasSuffix(prefix, "/") {
		return strings.HasPrefix(p, prefix)
	}
	return p == prefix || strings.HasPrefix(p, prefix+"/")
}

// inDir reports whether the slash-separated relative file path rel lies in
// directory dir or below it.
func inDir(rel, dir string) bool {
	return strings.HasPrefix(rel, dir+"/")
}

// importPath returns the unquoted path of an import spec.
func importPath(spec *ast.ImportSpec) string {
	p, err := strconv.Unquote(spec.Path.Value)
	if err != nil {
		return spec.Path.Value // cannot happen for a file that parsed
	}
	return p
}

// importViolations returns the imports of f that break a rule in rules. rel is
// f's path relative to the module root, slash-separated; it selects the rules
// that apply.
func importViolations(fset *token.FileSet, rel string, f *ast.File, rules []importRule) []violation {
	var out []violation
	for _, spec := range f.Imports {
		p := importPath(spec)
		for _, r := range rules {
			if !inDir(rel, r.dir) || !hasPathPrefix(p, r.forbidden) ||
				slices.ContainsFunc(r.exceptDirs, func(d string) bool { return inDir(rel, d) }) {
				continue
			}
			if slices.ContainsFunc(r.except, func(e string) bool { return hasPathPrefix(p, e) }) {
				continue
			}
			out = append(out, violation{
				pos: fset.Position(spec.Pos()),
				msg: fmt.Sprintf("%s imports %q: %s", r.dir, p, r.why),
			})
		}
	}
	return out
}

// purityViolations returns every place in f that reads the clock, sleeps, starts
// a timer, imports randomness or the OS, or starts a goroutine. It works on the
// syntax tree, so strings and comments never trigger it and an aliased import of
// time is still caught.
func purityViolations(fset *token.FileSet, f *ast.File) []violation {
	var out []violation
	add := func(n ast.Node, format string, args ...any) {
		out = append(out, violation{pos: fset.Position(n.Pos()), msg: fmt.Sprintf(format, args...)})
	}

	timeName := "" // the name package time is imported under, if at all
	for _, spec := range f.Imports {
		p := importPath(spec)
		for _, bad := range forbiddenPureImports {
			if hasPathPrefix(p, bad) {
				add(spec, "imports %q", p)
			}
		}
		if p != "time" {
			continue
		}
		switch {
		case spec.Name == nil:
			timeName = "time"
		case spec.Name.Name == ".":
			add(spec, "dot-imports \"time\", which hides clock reads")
		case spec.Name.Name != "_":
			timeName = spec.Name.Name
		}
	}

	ast.Inspect(f, func(n ast.Node) bool {
		switch n := n.(type) {
		case *ast.GoStmt:
			add(n, "starts a goroutine")
		case *ast.SelectorExpr:
			if id, ok := n.X.(*ast.Ident); ok && timeName != "" && id.Name == timeName && forbiddenTimeFuncs[n.Sel.Name] {
				add(n, "uses time.%s; time comes from the caller (log time)", n.Sel.Name)
			}
		}
		return true
	})
	return out
}

// moduleRoot returns the directory holding go.mod, found by walking up from the
// working directory, and checks that go.mod declares modulePath.
func moduleRoot(t *testing.T) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		gomod := filepath.Join(dir, "go.mod")
		if _, err := os.Stat(gomod); err == nil {
			if got := declaredModule(t, gomod); got != modulePath {
				t.Fatalf("%s declares module %q, want %q", gomod, got, modulePath)
			}
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod found above the working directory")
		}
		dir = parent
	}
}

// declaredModule returns the module path on the module line of the go.mod file
// at path.
func declaredModule(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && fields[0] == "module" {
			return strings.Trim(fields[1], `"`)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return ""
}

// sourceFile is one parsed non-test Go file of the module.
type sourceFile struct {
	rel  string // path relative to the module root, slash-separated
	file *ast.File
}

// parseModule parses every non-test .go file of the module rooted at root, as
// the go command would see them: testdata, vendor, directories starting with
// "." or "_" and nested modules are skipped. Build constraints are ignored, so
// every file is checked whatever platform it is for. A file that does not parse
// is an error, never silently skipped.
func parseModule(root string) (*token.FileSet, []sourceFile, error) {
	fset := token.NewFileSet()
	var files []sourceFile
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := d.Name()
		if d.IsDir() {
			if path == root {
				return nil
			}
			if name == "testdata" || name == "vendor" || strings.HasPrefix(name, ".") || strings.HasPrefix(name, "_") {
				return filepath.SkipDir
			}
			if _, err := os.Stat(filepath.Join(path, "go.mod")); err == nil {
				return filepath.SkipDir // a nested module is not ours
			}
			return nil
		}
		if !strings.HasSuffix(name, ".go") || strings.HasSuffix(name, "_test.go") ||
			strings.HasPrefix(name, ".") || strings.HasPrefix(name, "_") {
			return nil
		}
		rel, err := filepath.Rel(root, path)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		src, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		f, err := parser.ParseFile(fset, rel, src, parser.SkipObjectResolution)
		if err != nil {
			return err // a scanner.ErrorList naming the file and line
		}
		files = append(files, sourceFile{rel: rel, file: f})
		return nil
	})
	return fset, files, err
}

// mustParseModule is parseModule for a test that cannot go on without the files.
func mustParseModule(t *testing.T, root string) (*token.FileSet, []sourceFile) {
	t.Helper()
	fset, files, err := parseModule(root)
	if err != nil {
		t.Fatalf("parse module: %v", err)
	}
	return fset, files
}

// presentDirs returns, among dirs, those that hold at least one of files, and
// logs the others as skipped.
func presentDirs(t *testing.T, files []sourceFile, dirs []string) map[string]bool {
	t.Helper()
	present := map[string]bool{}
	for _, f := range files {
		for _, d := range dirs {
			if inDir(f.rel, d) {
				present[d] = true
			}
		}
	}
	for _, d := range dirs {
		if !present[d] {
			t.Logf("%s/: no Go files yet, skipped", d)
		}
	}
	return present
}

// TestImportDirection fails on any import in the module's non-test code that
// points the wrong way.
func TestImportDirection(t *testing.T) {
	t.Parallel()
	fset, files := mustParseModule(t, moduleRoot(t))
	if len(files) == 0 {
		t.Fatal("found no Go files in the module; the walk is broken")
	}
	var dirs []string
	for _, r := range importRules {
		if !slices.Contains(dirs, r.dir) {
			dirs = append(dirs, r.dir)
		}
	}
	presentDirs(t, files, dirs)
	for _, f := range files {
		for _, v := range importViolations(fset, f.rel, f.file, importRules) {
			t.Error(v)
		}
	}
}

// TestPurity fails if non-test code in limiter/ or fsm/ reads the clock, sleeps,
// uses randomness or the OS, or starts a goroutine.
func TestPurity(t *testing.T) {
	t.Parallel()
	fset, files := mustParseModule(t, moduleRoot(t))
	present := presentDirs(t, files, pureDirs)
	checked := 0
	for _, f := range files {
		if !slices.ContainsFunc(pureDirs, func(d string) bool { return inDir(f.rel, d) }) {
			continue
		}
		checked++
		for _, v := range purityViolations(fset, f.file) {
			t.Error(v)
		}
	}
	t.Logf("checked %d files in %d pure packages", checked, len(present))
}

// parseSource parses src as the file at relative path rel, failing the test on
// a syntax error.
func parseSource(t *testing.T, rel, src string) (*token.FileSet, *ast.File) {
	t.Helper()
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, rel, src, parser.SkipObjectResolution)
	if err != nil {
		t.Fatalf("test source does not parse: %v", err)
	}
	return fset, f
}

// messages returns the message of each violation, in order, for comparison.
func messages(vs []violation) []string {
	var out []string
	for _, v := range vs {
		out = append(out, v.msg)
	}
	return out
}

// fileImporting returns the source of a file in package pkg that imports paths.
func fileImporting(pkg string, paths ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "package %s\n\nimport (\n", pkg)
	for _, p := range paths {
		fmt.Fprintf(&b, "\t_ %q\n", p)
	}
	b.WriteString(")\n")
	return b.String()
}

// TestImportViolations shows that importViolations reports known-bad imports
// and accepts known-good ones.
func TestImportViolations(t *testing.T) {
	t.Parallel()
	const m = modulePath
	tests := []struct {
		name string
		rel  string // file path relative to the module root
		src  string
		want []string // violation messages, in order
	}{
		{name: "limiter imports fsm", rel: "limiter/bad.go",
			src:  fileImporting("limiter", m+"/fsm"),
			want: []string{`limiter imports "` + m + `/fsm": limiter imports nothing from this module`}},
		{name: "limiter imports client", rel: "limiter/bad.go",
			src:  fileImporting("limiter", m+"/client"),
			want: []string{`limiter imports "` + m + `/client": limiter imports nothing from this module`}},
		{name: "limiter imports internal package", rel: "limiter/x/bad.go",
			src:  fileImporting("x", m+"/internal/archtest"),
			want: []string{`limiter imports "` + m + `/internal/archtest": limiter imports nothing from this module`}},
		{name: "limiter uses the standard library and its own subpackage", rel: "limiter/good.go",
			src: fileImporting("limiter", "math/bits", "sync", "time", m+"/limiter/internal/gcra")},
		{name: "fsm imports limiter", rel: "fsm/good.go",
			src: fileImporting("fsm", m+"/limiter", "encoding/binary", "io")},
		{name: "fsm imports cluster", rel: "fsm/bad.go",
			src:  fileImporting("fsm", m+"/cluster"),
			want: []string{`fsm imports "` + m + `/cluster": fsm may import only limiter from this module`}},
		{name: "fsm imports a module package that does not exist yet", rel: "fsm/codec/bad.go",
			src:  fileImporting("codec", m+"/wire"),
			want: []string{`fsm imports "` + m + `/wire": fsm may import only limiter from this module`}},
		{name: "fsm imports hashicorp raft", rel: "fsm/bad.go",
			src:  fileImporting("fsm", "github.com/hashicorp/raft"),
			want: []string{`fsm imports "github.com/hashicorp/raft": fsm never imports hashicorp; the raft.FSM adapter lives in cluster`}},
		{name: "transport imports cluster and fsm", rel: "transport/server.go",
			src: fileImporting("transport", m+"/cluster", m+"/fsm/codec"),
			want: []string{
				`transport imports "` + m + `/cluster": transport must not import cluster`,
				`transport imports "` + m + `/fsm/codec": transport must not import fsm`,
			}},
		{name: "transport imports grpc and limiter", rel: "transport/server.go",
			src: fileImporting("transport", "google.golang.org/grpc", m+"/limiter")},
		{name: "client imports server-side code", rel: "client/lease.go",
			src: fileImporting("client", m+"/cluster", m+"/fsm", "github.com/hashicorp/memberlist", "go.etcd.io/bbolt"),
			want: []string{
				`client imports "` + m + `/cluster": a user's binary must not pull in a Raft server`,
				`client imports "` + m + `/fsm": a user's binary must not pull in a Raft server`,
				`client imports "github.com/hashicorp/memberlist": a user's binary must not pull in a Raft server`,
				`client imports "go.etcd.io/bbolt": a user's binary must not pull in a Raft server`,
			}},
		{name: "client imports transport and limiter", rel: "client/middleware/http.go",
			src: fileImporting("middleware", m+"/transport/leaseholdpb", m+"/limiter", m+"/client")},
		{name: "client imports Prometheus", rel: "client/stats.go",
			src:  fileImporting("client", "github.com/prometheus/client_golang/prometheus"),
			want: []string{`client imports "github.com/prometheus/client_golang/prometheus": only client/promcollector imports Prometheus`}},
		{name: "client's guard imports Prometheus", rel: "client/guard/guard.go",
			src:  fileImporting("guard", "github.com/prometheus/client_golang/prometheus"),
			want: []string{`client imports "github.com/prometheus/client_golang/prometheus": only client/promcollector imports Prometheus`}},
		{name: "the collector imports Prometheus and client", rel: "client/promcollector/collector.go",
			src: fileImporting("promcollector", "github.com/prometheus/client_golang/prometheus", m+"/client")},
		{name: "prefixes match whole path elements", rel: "client/x.go",
			src: fileImporting("client", m+"/clusterview", "go.etcd.io/bboltx")},
		{name: "cluster imports client and cmd", rel: "cluster/node.go",
			src: fileImporting("cluster", m+"/client", m+"/cmd/leasehold"),
			want: []string{
				`cluster imports "` + m + `/client": cluster must not import client`,
				`cluster imports "` + m + `/cmd/leasehold": cluster must not import cmd`,
			}},
		{name: "cluster imports fsm, raft and bbolt", rel: "cluster/node.go",
			src: fileImporting("cluster", m+"/fsm", "github.com/hashicorp/raft", "github.com/hashicorp/raft-boltdb/v2", "go.etcd.io/bbolt")},
		{name: "jepsen imports limiter", rel: "jepsen/checker/envelope.go",
			src:  fileImporting("checker", m+"/limiter"),
			want: []string{`jepsen imports "` + m + `/limiter": jepsen never uses limiter as its oracle`}},
		{name: "jepsen runner imports fsm", rel: "cmd/jepsen/main.go",
			src:  fileImporting("main", m+"/fsm"),
			want: []string{`cmd/jepsen imports "` + m + `/fsm": jepsen never uses fsm as its oracle`}},
		{name: "jepsen imports client", rel: "jepsen/run.go",
			src: fileImporting("jepsen", m+"/client", m+"/transport")},
		{name: "cmd imports everything", rel: "cmd/leasehold/main.go",
			src: fileImporting("main", m+"/cluster", m+"/fsm", m+"/limiter", m+"/transport")},
		{name: "directory names match whole path elements", rel: "limiterx/a.go",
			src: fileImporting("limiterx", m+"/fsm")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			fset, f := parseSource(t, tt.rel, tt.src)
			got := messages(importViolations(fset, tt.rel, f, importRules))
			if !slices.Equal(got, tt.want) {
				t.Errorf("violations:\n got  %q\n want %q", got, tt.want)
			}
		})
	}
}

// TestPurityViolations shows that purityViolations reports known-bad code and
// accepts known-good code.
func TestPurityViolations(t *testing.T) {
	t.Parallel()
	const clockMsg = "; time comes from the caller (log time)"
	tests := []struct {
		name string
		src  string
		want []string // violation messages, in order
	}{
		{name: "time.Now call", src: `package fsm
import "time"
func stamp() int64 { return time.Now().UnixNano() }
`, want: []string{"uses time.Now" + clockMsg}},
		{name: "time.Now as a value", src: `package fsm
import "time"
var clock = time.Now
`, want: []string{"uses time.Now" + clockMsg}},
		{name: "aliased time package", src: `package limiter
import stdtime "time"
func age(t stdtime.Time) stdtime.Duration { return stdtime.Since(t) }
`, want: []string{"uses time.Since" + clockMsg}},
		{name: "sleeps, timers and tickers", src: `package limiter
import "time"
func wait(d time.Duration, t time.Time) {
	time.Sleep(d)
	<-time.After(d)
	_ = time.NewTimer(d)
	_ = time.Tick(d)
	_ = time.Until(t)
	_ = time.NewTicker(d)
	time.AfterFunc(d, func() {})
}
`, want: []string{
			"uses time.Sleep" + clockMsg,
			"uses time.After" + clockMsg,
			"uses time.NewTimer" + clockMsg,
			"uses time.Tick" + clockMsg,
			"uses time.Until" + clockMsg,
			"uses time.NewTicker" + clockMsg,
			"uses time.AfterFunc" + clockMsg,
		}},
		{name: "dot import of time", src: `package fsm
import . "time"
var _ = Now
`, want: []string{`dot-imports "time", which hides clock reads`}},
		{name: "goroutine", src: `package fsm
func spawn() { go func() {}() }
`, want: []string{"starts a goroutine"}},
		{name: "os and its subpackages", src: `package fsm
import (
	"os"
	"os/exec"
)
var _, _ = os.Getpid, exec.Command
`, want: []string{`imports "os"`, `imports "os/exec"`}},
		{name: "randomness", src: `package limiter
import (
	crand "crypto/rand"
	"math/rand"
	randv2 "math/rand/v2"
)
var _, _, _ = crand.Read, rand.Int63, randv2.N[int]
`, want: []string{`imports "crypto/rand"`, `imports "math/rand"`, `imports "math/rand/v2"`}},
		{name: "pure code", src: `package limiter
import (
	"math/bits"
	"sync"
	"time"
)
// Clock is read by the caller, never here.
type Clock interface{ Now() time.Time }
type Bucket struct {
	mu struct {
		sync.Mutex
		tat int64
	}
	period time.Duration
}
func (b *Bucket) Take(now int64, c Clock) time.Time {
	b.mu.Lock()
	defer b.mu.Unlock()
	hi, _ := bits.Mul64(uint64(now), 2)
	_ = hi
	_ = "time.Now() and go func(){}() in a string are not code"
	return c.Now().Add(b.period) // a method called Now is not time.Now
}
var epoch = time.Unix(0, 0)
`},
		{name: "no time import means no package time", src: `package fsm
type clock struct{}
func (clock) Now() int64 { return 0 }
var time clock
var _ = time.Now()
`},
		{name: "blank import of time", src: `package fsm
import _ "time"
`},
		{name: "look-alike import paths", src: `package fsm
import (
	_ "github.com/example/os"
	_ "osutil"
)
`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			fset, f := parseSource(t, "fsm/case.go", tt.src)
			got := messages(purityViolations(fset, f))
			if !slices.Equal(got, tt.want) {
				t.Errorf("violations:\n got  %q\n want %q", got, tt.want)
			}
		})
	}
}

// TestParseModule shows that the module walk reads only the files the go
// command would build into the module, and that a syntax error fails the walk
// instead of hiding a file from the checks.
func TestParseModule(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	write := func(rel, src string) {
		t.Helper()
		path := filepath.Join(root, filepath.FromSlash(rel))
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("go.mod", "module "+modulePath+"\n")
	write("limiter/a.go", "package limiter\n")
	write("limiter/a_test.go", "package broken(\n")
	write("limiter/testdata/b.go", "package broken(\n")
	write("limiter/.hidden/c.go", "package broken(\n")
	write("limiter/_old/d.go", "package broken(\n")
	write("vendor/e.go", "package broken(\n")
	write("tools/go.mod", "module example.com/tools\n")
	write("tools/f.go", "package broken(\n")
	write("fsm/g.go", "package fsm\n")
	write("fsm/notes.txt", "not Go\n")

	_, files := mustParseModule(t, root)
	var got []string
	for _, f := range files {
		got = append(got, f.rel)
	}
	slices.Sort(got)
	if want := []string{"fsm/g.go", "limiter/a.go"}; !slices.Equal(got, want) {
		t.Errorf("parsed %q, want %q", got, want)
	}

	write("fsm/h.go", "package fsm\nfunc (\n")
	if _, _, err := parseModule(root); err == nil || !strings.Contains(err.Error(), "fsm/h.go:2") {
		t.Errorf("parseModule with a syntax error in fsm/h.go: err = %v, want one naming fsm/h.go:2", err)
	}
}
