package main

import (
	"flag"
	"strings"
	"testing"
)

func TestServeHTTPFlagsRefuse(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"peers without an address", []string{"--console-peers", "n2=127.0.0.1:7302"}, "--console-peers needs --http-addr"},
		{"remote without TLS", []string{"--http-addr", "0.0.0.0:7301"}, "not a loopback address"},
	} {
		fs := flag.NewFlagSet("serve", flag.ContinueOnError)
		h := addServeHTTPFlags(fs)
		if err := fs.Parse(tc.args); err != nil {
			t.Fatal(err)
		}
		face, err := h.listen(nil, false)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, %v; want an error saying %q", tc.name, face, err, tc.want)
		}
	}
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	h := addServeHTTPFlags(fs)
	if face, err := h.listen(nil, false); face != nil || err != nil {
		t.Errorf("no --http-addr: %v, %v; want neither", face, err)
	}
}
