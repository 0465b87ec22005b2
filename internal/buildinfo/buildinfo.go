// Package buildinfo says which upshift a binary is, from what the Go toolchain records in it (module version,
// VCS revision), so `upshift version` needs no flag in the Makefile and is right for `go build` and `go install`
// alike, and for a program that embeds the engine.
package buildinfo

import (
	"runtime/debug"
)

// modulePath is upshift's module, looked up among the dependencies of a program that embeds the engine.
const modulePath = "github.com/upshift-io/upshift"

// Version returns upshift's version in this binary: the module version Go recorded (a tag, or a pseudo-version
// with the commit and "+dirty" for a modified work tree), else "devel" with the VCS revision, else "unknown".
func Version() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}

	if info.Main.Path != modulePath {
		for _, dep := range info.Deps {
			if dep.Path == modulePath {
				return dep.Version
			}
		}
	}

	if v := info.Main.Version; v != "" && v != "(devel)" {
		return v
	}

	var revision, modified string

	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			revision = s.Value
		case "vcs.modified":
			modified = s.Value
		}
	}

	if revision == "" {
		return "devel"
	}

	if modified == "true" {
		revision += "+dirty"
	}

	return "devel " + revision
}
