// Package e2e tests Leasehold end to end: real `leasehold serve` processes on
// loopback, driven through the gRPC API and the SDK, killed and restarted;
// their /metrics and /readyz scraped, and their console driven in headless
// Chromium (chromedp).
//
// It holds tests only; the processes are internal/proc's. The binary is
// built once per test run into a temporary directory (proctest.Main); every
// process a test starts is killed by that test's cleanup, by PID, and a
// node that exits on its own fails the test.
package e2e
