package pki

import (
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestGossipKeyWriteAndRead(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tls", GossipKeyFile)
	made, err := WriteGossipKey(path)
	if err != nil || !made {
		t.Fatalf("WriteGossipKey = %v, %v", made, err)
	}
	keys, err := ReadGossipKeys(path)
	if err != nil || len(keys) != 1 || len(keys[0]) != GossipKeySize {
		t.Fatalf("ReadGossipKeys = %d keys, %v", len(keys), err)
	}
	if made, err := WriteGossipKey(path); err != nil || made {
		t.Fatalf("a second WriteGossipKey = %v, %v; want the file left as it is", made, err)
	}
	// A second key below the first: both kept, the first first.
	second := base64.StdEncoding.EncodeToString(make([]byte, 16))
	b, _ := os.ReadFile(path)
	if err := os.WriteFile(path, append(b, []byte(second+"\n")...), 0o600); err != nil {
		t.Fatal(err)
	}
	if keys2, err := ReadGossipKeys(path); err != nil || len(keys2) != 2 || string(keys2[0]) != string(keys[0]) {
		t.Fatalf("keyring of two = %d keys, %v", len(keys2), err)
	}
}

func TestGossipKeyRefusals(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name, body string
		mode       os.FileMode
		want       string
	}{
		{"not base64", "!!!", 0o600, "not base64"},
		{"wrong size", base64.StdEncoding.EncodeToString(make([]byte, 20)), 0o600, "20 bytes"},
		{"empty", "# nothing\n", 0o600, "no key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "-"))
			if err := os.WriteFile(path, []byte(tc.body+"\n"), tc.mode); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(path, tc.mode); err != nil {
				t.Fatal(err)
			}
			if _, err := ReadGossipKeys(path); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("ReadGossipKeys = %v, want an error with %q", err, tc.want)
			}
		})
	}
}
