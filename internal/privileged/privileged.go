// Package privileged guards the tests that need root: network namespaces,
// veth pairs, BPF. They fail without root rather than skip, so a run that
// could not test the datapath never passes for one that did; a developer
// without root opts out with ROUTEMODE_ALLOW_SKIP=1.
package privileged

import (
	"os"
	"testing"
)

// Require fails t unless it runs as root (or skips it when the developer
// opted out), saying why root is needed.
func Require(t testing.TB, why string) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("ROUTEMODE_ALLOW_SKIP") == "1" {
		t.Skipf("needs root: %s (ROUTEMODE_ALLOW_SKIP=1)", why)
	}
	t.Fatalf("needs root: %s; run as root (CI does), or set ROUTEMODE_ALLOW_SKIP=1 to skip", why)
}

// Unavailable fails t because this machine cannot run it (a kernel
// without a feature the test needs), or skips it when the developer opted
// out: a run that could not exercise the datapath must not pass for one
// that did.
func Unavailable(t testing.TB, why string) {
	t.Helper()
	if os.Getenv("ROUTEMODE_ALLOW_SKIP") == "1" {
		t.Skipf("unavailable here: %s (ROUTEMODE_ALLOW_SKIP=1)", why)
	}
	t.Fatalf("unavailable here: %s; set ROUTEMODE_ALLOW_SKIP=1 to skip", why)
}
