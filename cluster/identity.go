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
// and writes nothing: KeepID keeps it, once the rest of the node's
// configuration has been checked, so that a start refused for its flags
// leaves the directory as it was.
//
//   - given (serve --id, or the id a TLS certificate names), if not empty:
//     it must equal the id the directory keeps, if it keeps one;
//   - else the id the directory keeps;
//   - else a new random id ("node-" and 16 hex digits).
//
// The same id is the node's Raft server id and its gossip name, so a node
// restarted at another address is the same member (DESIGN.md, "Membership").
// A mismatch is an error matching ErrIDMismatch: the directory belongs to
// another node.
func ResolveID(dir, given string) (string, error) {
	kept, err := readID(dir)
	switch {
	case err != nil:
		return "", fmt.Errorf("resolve node id: %w", err)
	case kept != "" && given != "" && given != kept:
		return "", mismatch(dir, kept, given)
	case kept != "":
		return kept, nil
	case given != "":
		return given, nil
	}
	var r [8]byte
	if _, err := rand.Read(r[:]); err != nil {
		return "", fmt.Errorf("resolve node id: %w", err)
	}
	return "node-" + hex.EncodeToString(r[:]), nil
}

// KeepID keeps id in dir/node-id (created with dir if missing), durably,
// unless the file holds it already; a file holding another id is an error
// matching ErrIDMismatch. It returns a function that removes what it made
// (the file, and dir if it made that too), for a start refused after it:
// Open's *StateError.
func KeepID(dir, id string) (undo func() error, err error) {
	kept, err := readID(dir)
	switch {
	case err != nil:
		return nil, fmt.Errorf("keep node id: %w", err)
	case kept == id:
		return func() error { return nil }, nil
	case kept != "":
		return nil, mismatch(dir, kept, id)
	}
	_, err = os.Stat(dir)
	madeDir := errors.Is(err, os.ErrNotExist)
	if err := writeID(dir, id); err != nil {
		return nil, fmt.Errorf("keep node id: %w", err)
	}
	return func() error {
		err := os.Remove(filepath.Join(dir, idFile))
		if err == nil && madeDir {
			err = os.Remove(dir) // only if nothing else is in it
		}
		return err
	}, nil
}

// readID returns the id dir/node-id keeps, "" if there is no such file.
func readID(dir string) (string, error) {
	if dir == "" {
		return "", errors.New("no data directory")
	}
	path := filepath.Join(dir, idFile)
	b, err := os.ReadFile(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return "", nil
	case err != nil:
		return "", err
	}
	kept := strings.TrimSpace(string(b))
	if kept == "" {
		return "", fmt.Errorf("%s is empty; write the node's id in it, or remove it", path)
	}
	return kept, nil
}

func mismatch(dir, kept, given string) error {
	return fmt.Errorf("%w: %s holds %q, but this node was given %q; the directory belongs to another node "+
		"(use its id, or another data directory)", ErrIDMismatch, filepath.Join(dir, idFile), kept, given)
}

// writeID writes dir/node-id through a temporary file, and syncs it and dir.
func writeID(dir, id string) error {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return err
	}
	path := filepath.Join(dir, idFile)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(id+"\n"), 0o640); err != nil {
		return err
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
	return err
}
