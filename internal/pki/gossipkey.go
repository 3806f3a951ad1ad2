package pki

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// GossipKeyFile is the name `leasehold certs gossip-key` and a local
// cluster give the gossip keyring file in the certificate directory.
const GossipKeyFile = "gossip.key"

// GossipKeySize is the size of a new gossip key: AES-256.
const GossipKeySize = 32

// ReadGossipKeys reads a gossip keyring file: one base64 key per line (16,
// 24 or 32 bytes once decoded), the first one used to encrypt and every
// one accepted to decrypt, so a new key can be rolled in by putting it
// first and the old one after it. Blank lines and lines starting with #
// are skipped. Its mode is the caller's to check (the node warns, as for
// its TLS key, and does not refuse: a Kubernetes secret is mounted 0644).
func ReadGossipKeys(path string) ([][]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("gossip key: %w", err)
	}
	var keys [][]byte
	sc := bufio.NewScanner(bytes.NewReader(b))
	for line := 1; sc.Scan(); line++ {
		s := strings.TrimSpace(sc.Text())
		if s == "" || strings.HasPrefix(s, "#") {
			continue
		}
		k, err := base64.StdEncoding.DecodeString(s)
		if err != nil {
			return nil, fmt.Errorf("gossip key %s line %d: not base64: %w", path, line, err)
		}
		if n := len(k); n != 16 && n != 24 && n != 32 {
			return nil, fmt.Errorf("gossip key %s line %d: %d bytes; want 16, 24 or 32", path, line, n)
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("gossip key %s: no key in it", path)
	}
	return keys, nil
}

// WriteGossipKey writes a new random key to path (mode 0600, its directory
// made if missing) unless the file exists: then it leaves it as it is and
// returns false.
func WriteGossipKey(path string) (made bool, err error) {
	if _, err := os.Stat(path); err == nil {
		return false, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return false, err
	}
	k := make([]byte, GossipKeySize)
	if _, err := rand.Read(k); err != nil {
		return false, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return false, err
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return false, err
	}
	_, err = fmt.Fprintf(f, "# Leasehold gossip keyring: one base64 key a line; the first encrypts.\n%s\n",
		base64.StdEncoding.EncodeToString(k))
	if err = errors.Join(err, f.Sync(), f.Close()); err != nil {
		return false, err
	}
	return true, nil
}
