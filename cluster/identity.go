package cluster

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// idFile is the file in a data directory that keeps the node's id, one
// line, written once.
const idFile = "node-id"

// ErrIDMismatch is returned by ResolveID when the id a node is given is not
// the one its data directory belongs to.
var ErrIDMismatch = errors.New("node id does not match the data directory")

// ResolveID returns the stable id of the node whose data directory is dir,
// and keeps it there (dir/node-id, created with dir if missing):
//
//   - given (serve --id, or the id a TLS certificate names), if not empty:
//     it must equal the id the directory keeps, if it keeps one;
//   - else the id the directory keeps;
//   - else a new random id ("node-" and 16 hex digits), generated once.
//
// The same id is the node's Raft server id and its gossip name, so a node
// restarted at another address is the same member (DESIGN.md, "Membership").
// A mismatch is an error matching ErrIDMismatch: the directory belongs to
// another node.
func ResolveID(dir, given string) (string, error) {
	if dir == "" {
		return "", errors.New("resolve node id: no data directory")
	}
	path := filepath.Join(dir, idFile)
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		kept := strings.TrimSpace(string(b))
		if kept == "" {
			return "", fmt.Errorf("resolve node id: %s is empty; write the node's id in it, or remove it", path)
		}
		if given != "" && given != kept {
			return "", fmt.Errorf("%w: %s holds %q, but this node was given %q; the directory belongs to another node "+
				"(use its id, or another data directory)", ErrIDMismatch, path, kept, given)
		}
		return kept, nil
	case !errors.Is(err, os.ErrNotExist):
		return "", fmt.Errorf("resolve node id: %w", err)
	}
	id := given
	if id == "" {
		var r [8]byte
		if _, err := rand.Read(r[:]); err != nil {
			return "", fmt.Errorf("resolve node id: %w", err)
		}
		id = "node-" + hex.EncodeToString(r[:])
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return "", fmt.Errorf("resolve node id: %w", err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(id+"\n"), 0o640); err != nil {
		return "", fmt.Errorf("resolve node id: %w", err)
	}
	f, err := os.Open(tmp)
	if err == nil {
		err = errors.Join(f.Sync(), f.Close())
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err == nil {
		err = syncDir(dir)
	}
	if err != nil {
		return "", fmt.Errorf("resolve node id: %w", err)
	}
	return id, nil
}
