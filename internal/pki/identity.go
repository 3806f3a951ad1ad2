package pki

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// Role is what a certificate's holder may do. Values are stable.
type Role int

const (
	// RoleNode is a cluster node: it serves Raft and the client API and
	// counts as an operator on the client API.
	RoleNode Role = 1
	// RoleOperator may call every RPC, limits and membership included.
	RoleOperator Role = 2
	// RoleClient may acquire and release tokens, read limits and status.
	RoleClient Role = 3
)

// String returns "node", "operator" or "client".
func (r Role) String() string {
	switch r {
	case RoleNode:
		return "node"
	case RoleOperator:
		return "operator"
	case RoleClient:
		return "client"
	}
	return fmt.Sprintf("Role(%d)", int(r))
}

// ParseRole parses "node", "operator" or "client".
func ParseRole(s string) (Role, error) {
	for _, r := range []Role{RoleNode, RoleOperator, RoleClient} {
		if r.String() == s {
			return r, nil
		}
	}
	return 0, fmt.Errorf("role %q: want node, operator or client", s)
}

// trustDomain is the host of every identity URI.
const trustDomain = "leasehold"

// MaxNameLen is the longest name an identity may have, in bytes.
const MaxNameLen = 128

// ErrNoIdentity: a certificate carries no Leasehold identity, or a
// connection has no verified certificate to carry one.
var ErrNoIdentity = errors.New("no leasehold identity")

// Identity is who a certificate's holder is: a role and a name (a node's
// id, an operator's or client's name).
type Identity struct {
	Role Role
	Name string
}

// String returns "role/name", the form logs show.
func (id Identity) String() string { return id.Role.String() + "/" + id.Name }

// URI returns spiffe://leasehold/<role>/<name>.
func (id Identity) URI() *url.URL {
	return &url.URL{Scheme: "spiffe", Host: trustDomain, Path: "/" + id.Role.String() + "/" + id.Name}
}

// Validate checks the role and the name: 1 to MaxNameLen bytes of ASCII
// letters, digits, '.', '_' and '-', not starting with '.'.
func (id Identity) Validate() error {
	if id.Role != RoleNode && id.Role != RoleOperator && id.Role != RoleClient {
		return fmt.Errorf("identity: unknown role %v", id.Role)
	}
	return ValidName(id.Name)
}

// ValidName checks a name for an identity: 1 to MaxNameLen bytes of ASCII
// letters, digits, '.', '_' and '-', not starting with '.'.
func ValidName(name string) error {
	if name == "" || len(name) > MaxNameLen {
		return fmt.Errorf("name %q: want 1 to %d bytes", name, MaxNameLen)
	}
	if name[0] == '.' {
		return fmt.Errorf("name %q: must not start with '.'", name)
	}
	for _, c := range []byte(name) {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-'
		if !ok {
			return fmt.Errorf("name %q: only letters, digits, '.', '_' and '-' are allowed", name)
		}
	}
	return nil
}

// parseURI returns the identity u names, or false if u is not a Leasehold
// identity URI.
func parseURI(u *url.URL) (Identity, bool) {
	if u.Scheme != "spiffe" || u.Host != trustDomain || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return Identity{}, false
	}
	role, name, ok := strings.Cut(strings.TrimPrefix(u.Path, "/"), "/")
	if !ok {
		return Identity{}, false
	}
	r, err := ParseRole(role)
	if err != nil {
		return Identity{}, false
	}
	id := Identity{Role: r, Name: name}
	if id.Validate() != nil {
		return Identity{}, false
	}
	return id, true
}

// IdentityOf returns the identity cert carries. A certificate with no
// Leasehold identity URI, or more than one, has none: the error matches
// ErrNoIdentity. IdentityOf does not verify cert.
func IdentityOf(cert *x509.Certificate) (Identity, error) {
	var found []Identity
	for _, u := range cert.URIs {
		if id, ok := parseURI(u); ok {
			found = append(found, id)
		}
	}
	switch len(found) {
	case 1:
		return found[0], nil
	case 0:
		return Identity{}, fmt.Errorf("%w: certificate %q has no spiffe://%s/<role>/<name> URI", ErrNoIdentity, cert.Subject.CommonName, trustDomain)
	}
	return Identity{}, fmt.Errorf("%w: certificate %q names %d identities; want one", ErrNoIdentity, cert.Subject.CommonName, len(found))
}

// PeerIdentity returns the identity of the peer of a connection whose
// certificate crypto/tls verified (a server that required client
// certificates). It fails, matching ErrNoIdentity, when the connection has
// no verified chain or its certificate carries no single identity.
func PeerIdentity(cs tls.ConnectionState) (Identity, error) {
	if len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
		return Identity{}, fmt.Errorf("%w: the peer presented no verified certificate", ErrNoIdentity)
	}
	return IdentityOf(cs.VerifiedChains[0][0])
}
