// Package redislua is the baseline Leasehold is compared against: a token
// bucket kept in Redis by a Lua script, to which every client passes its own
// clock reading (Script), and the usual sorted-set sliding window, whose
// members are the callers' clock readings (WindowScript). It holds a minimal
// RESP2 client (one connection per goroutine, one command at a time) and the
// scripts.
//
// The client is hand-written rather than go-redis: the bench needs a few
// commands (SCRIPT LOAD, EVALSHA, WAIT, PING, SET) over one connection per
// simulated client, with no pooling, pipelining, retries or cluster support
// to get in the way of measuring one round trip per decision, and about 200
// lines cost less than a dependency a user's binary would never need.
//
// It imports only the standard library.
package redislua
