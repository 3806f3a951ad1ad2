// Package e2e tests Leasehold end to end: real `leasehold serve` processes on
// loopback, driven through the gRPC API and the SDK, killed and restarted.
//
// It holds tests only. The binary is built once per test run into a temporary
// directory; every process a test starts is stopped by that test, by PID.
package e2e
