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
