package nslab

import (
	"os"
	"strings"
	"testing"
	"time"
)

// TestLabLeavesNothing builds a lab with pods and health endpoints inside a
// subtest and checks that the subtest's cleanup removed every namespace
// (and with them every device) it made.
func TestLabLeavesNothing(t *testing.T) {
	RequireRoot(t)
	var id string
	var underlayPath string
	t.Run("lab", func(t *testing.T) {
		l := New(t, Options{Nodes: 2})
		id, underlayPath = l.ID, l.UnderlayPath()
		ctx := Context(t, time.Minute)
		l.Step(ctx, l.Nodes, Tunnel, 20*time.Second)
		a := l.Nodes[0].AddPod(ctx, "a")
		b := l.Nodes[1].AddPod(ctx, "b")
		if _, err := a.Ping(ctx, b.EchoAddr(), 64, false); err != nil {
			t.Errorf("pod a → pod b: %v", err)
		}
		if got := Leftovers(id); len(got) != 7 { // underlay, 2 nodes, 2 health, 2 pods
			t.Errorf("lab namespaces: %v", got)
		}
		for _, name := range Leftovers(id) {
			if !strings.HasPrefix(name, id+"-") {
				t.Errorf("namespace %s lacks the lab prefix", name)
			}
		}
	})
	if left := Leftovers(id); len(left) != 0 {
		t.Errorf("lab %s left namespaces behind: %v", id, left)
	}
	if _, err := os.Stat(underlayPath); !os.IsNotExist(err) {
		t.Errorf("underlay namespace %s still exists: %v", underlayPath, err)
	}
}
