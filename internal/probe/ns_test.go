package probe

import (
	"crypto/rand"
	"encoding/hex"
	"testing"

	"github.com/routemode/routemode/agent/nsutil"
)

// newNS creates a named namespace removed at cleanup.
func newNS(t *testing.T) string {
	t.Helper()
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	name := "rmprobe" + hex.EncodeToString(b)
	n, err := nsutil.Create(name)
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
