package proc

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestLineWriter(t *testing.T) {
	var got []string
	w := &lineWriter{f: func(s string) { got = append(got, s) }}
	long := strings.Repeat("x", maxLine+1)
	for _, chunk := range []string{"a", "b\nc\n", "", "\n", long[:10], long[10:], "\nafter-long\n", long, "y\nlast"} {
		if n, err := w.Write([]byte(chunk)); n != len(chunk) || err != nil {
			t.Fatalf("Write(%d bytes) = %d, %v", len(chunk), n, err)
		}
	}
	w.flush()
	// A line over maxLine is dropped, in one write or in several; what
	// follows it is kept.
	want := []string{"ab", "c", "", "after-long", "last"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("lines (-want +got):\n%s", diff)
	}
}
