package client_test

import (
	"os"
	"strings"
	"testing"
)

// The README's "Guard an AI budget" snippet is ExampleBudget, word for
// word: the example runs (go test checks its output), so the README's
// snippet compiles and does what it says.
func TestReadmeSnippetIsExampleBudget(t *testing.T) {
	src, err := os.ReadFile("budget_example_test.go")
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	fn := string(src)
	i := strings.Index(fn, "func ExampleBudget() {\n")
	if i < 0 {
		t.Fatal("no ExampleBudget in budget_example_test.go")
	}
	fn = fn[i:]
	fn = fn[:strings.Index(fn, "\n}\n")+3]

	doc := string(readme)
	j := strings.Index(doc, "\n## Guard an AI budget\n")
	if j < 0 {
		t.Fatal(`README has no "## Guard an AI budget" section`)
	}
	doc = doc[j:]
	k := strings.Index(doc, "```go\n")
	if k < 0 {
		t.Fatal("the section has no Go snippet")
	}
	doc = doc[k+len("```go\n"):]
	snippet := doc[:strings.Index(doc, "```")]
	if snippet != fn {
		t.Errorf("README snippet:\n%s\nExampleBudget:\n%s", snippet, fn)
	}
}
