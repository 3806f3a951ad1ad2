package buildinfo

import (
	"runtime"
	"runtime/debug"
	"testing"
)

func TestFromBuildInfo(t *testing.T) {
	const rev = "05d4a62abcdef0123456789abcdef0123456789a"
	vcs := func(modified string) []debug.BuildSetting {
		return []debug.BuildSetting{{Key: "vcs", Value: "git"}, {Key: "vcs.revision", Value: rev}, {Key: "vcs.modified", Value: modified}}
	}
	for _, tc := range []struct {
		name   string
		bi     *debug.BuildInfo
		linked string
		want   Info
	}{
		{"no build info", nil, "", Info{Version: "dev"}},
		{"go run: devel, no VCS", &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}}, "", Info{Version: "dev"}},
		{"a tagged module", &debug.BuildInfo{Main: debug.Module{Version: "v1.4.0"}, Settings: vcs("false")}, "",
			Info{Version: "v1.4.0", Revision: rev}},
		{"a checkout's pseudo-version", &debug.BuildInfo{Main: debug.Module{Version: "v0.0.0-20261207091349-05d4a62abcde+dirty"},
			Settings: vcs("true")}, "", Info{Version: "v0.0.0-20261207091349-05d4a62abcde+dirty", Revision: rev, Modified: true}},
		{"devel, clean tree", &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}, Settings: vcs("false")}, "",
			Info{Version: "05d4a62abcde", Revision: rev}},
		{"devel, modified tree", &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}, Settings: vcs("true")}, "",
			Info{Version: "05d4a62abcde-dirty", Revision: rev, Modified: true}},
		{"set at link time", &debug.BuildInfo{Main: debug.Module{Version: "v1.4.0"}, Settings: vcs("true")}, "v1.4.1-rc1",
			Info{Version: "v1.4.1-rc1", Revision: rev, Modified: true}},
	} {
		tc.want.GoVersion = runtime.Version()
		if got := fromBuildInfo(tc.bi, tc.linked); got != tc.want {
			t.Errorf("%s: fromBuildInfo = %+v; want %+v", tc.name, got, tc.want)
		}
	}
}
