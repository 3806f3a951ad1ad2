package main

import (
	"maps"
	"testing"
)

func TestParseDialAddrs(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want map[string]string
		bad  bool
	}{
		{in: "", want: nil},
		{in: "n2=127.0.0.1:9002,n3=127.0.0.1:9003", want: map[string]string{"n2": "127.0.0.1:9002", "n3": "127.0.0.1:9003"}},
		{in: "n2", bad: true},
		{in: "=127.0.0.1:1", bad: true},
		{in: "n2=", bad: true},
		{in: "n2=127.0.0.1:1,n2=127.0.0.1:2", bad: true},
	} {
		got, err := parseDialAddrs(tc.in)
		if (err != nil) != tc.bad || !maps.Equal(got, tc.want) {
			t.Errorf("parseDialAddrs(%q) = %v, %v; want %v, error %v", tc.in, got, err, tc.want, tc.bad)
		}
	}
}
