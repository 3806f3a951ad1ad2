// Package buildinfo says which build of Leasehold is running, from what
// the go command recorded in the binary (runtime/debug.ReadBuildInfo) or
// what the linker was told.
package buildinfo

import (
	"runtime"
	"runtime/debug"
)

// version, if set at link time, is the build's version:
//
//	go build -ldflags "-X github.com/leasehold/leasehold/internal/buildinfo.version=v1.4.0" ./cmd/leasehold
var version string

// Info is a build's identity.
type Info struct {
	// Version is, in order: the one set at link time; the main module's
	// version, unless "(devel)" (go install of a tagged module, or go build
	// in a checkout, which stamps a pseudo-version); the VCS revision's
	// first 12 digits, "-dirty" after them if the tree was modified; "dev".
	Version string
	// Revision is the VCS revision the binary was built from, in full;
	// "" if the go command did not record one (go run, go test, -buildvcs=false).
	Revision string
	// Modified reports that the tree had changes not committed at Revision.
	Modified bool
	// GoVersion is the Go toolchain that built the binary (runtime.Version).
	GoVersion string
}

// Read returns the running binary's Info.
func Read() Info {
	bi, _ := debug.ReadBuildInfo()
	return fromBuildInfo(bi, version)
}

// fromBuildInfo derives an Info from the go command's record (nil if it
// left none) and the version set at link time ("" if none).
func fromBuildInfo(bi *debug.BuildInfo, linked string) Info {
	info := Info{GoVersion: runtime.Version()}
	var module string
	if bi != nil {
		module = bi.Main.Version
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				info.Revision = s.Value
			case "vcs.modified":
				info.Modified = s.Value == "true"
			}
		}
	}
	switch {
	case linked != "":
		info.Version = linked
	case module != "" && module != "(devel)":
		info.Version = module
	case info.Revision != "":
		info.Version = shortRevision(info.Revision)
		if info.Modified {
			info.Version += "-dirty"
		}
	default:
		info.Version = "dev"
	}
	return info
}

// shortRevision is a revision's first 12 digits, as Go's pseudo-versions
// abbreviate it.
func shortRevision(rev string) string {
	if len(rev) > 12 {
		return rev[:12]
	}
	return rev
}
