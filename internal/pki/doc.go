// Package pki is Leasehold's certificates: a CA, node and client
// certificates made with crypto/x509 (ECDSA P-256), the identity each one
// carries, and TLS configurations that re-read their files when they
// change.
//
// An identity is a role and a name, carried as one URI SAN,
// spiffe://leasehold/<role>/<name>:
//
//   - node/<id>: a cluster node. It serves the client API and Raft, and
//     dials its peers; its certificate also names the hosts and IPs it is
//     served at (loopback by default). Counts as an operator on the client
//     API.
//   - operator/<name>: may call every RPC, SetLimit and DeleteLimit included.
//   - client/<name>: may Acquire, Release, Charge, Extend, Restrict,
//     GetLimit and call Status.
//
// A [Source] holds a certificate, its key and the CA bundle, and checks the
// three files on every handshake: when one changed, it reads them again, so
// new connections use a rotated certificate or CA without a restart. A set
// of files that does not load (a key that does not match its certificate,
// half written) is not used; the Source keeps the last good set and logs
// once.
//
// Invariants, each tested:
//
//   - Every configuration requires TLS 1.2 or later and a certificate on
//     both sides, verified against the Source's current CA bundle.
//   - A certificate carries exactly one Leasehold identity; one with none or
//     two is refused.
//   - Private keys are written with mode 0600, through a temporary file
//     renamed into place, so a reader never sees half a key.
//
// Package pki imports only the standard library.
package pki
