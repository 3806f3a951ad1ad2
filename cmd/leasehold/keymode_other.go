//go:build !unix

package main

import "log/slog"

// warnUnprotectedKey does nothing outside Unix, whose file modes it reads.
func warnUnprotectedKey(*slog.Logger, string, string) {}
