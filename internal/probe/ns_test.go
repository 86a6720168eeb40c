package probe

import (
	"testing"

	"github.com/routemode/routemode/agent/nsutil"
)

// newNS creates a named namespace removed at cleanup.
func newNS(t *testing.T) string {
	t.Helper()
	name, n, err := nsutil.CreateTemp("rmprobe")
	if err != nil {
		t.Fatal(err)
	}
	path := n.Path()
	n.Close()
	t.Cleanup(func() {
		if err := nsutil.Delete(name); err != nil {
			t.Error(err)
		}
	})
	return path
}
