package nslab

import (
	"testing"
	"time"
)

func TestDbgFirstPing(t *testing.T) {
	for round := 0; round < 3; round++ {
		t.Run("r", func(t *testing.T) {
			l := New(t, Options{Nodes: 2})
			ctx := Context(t, time.Minute)
			l.Step(ctx, l.Nodes, Tunnel, 20*time.Second)
			a := l.Nodes[0].AddPod(ctx, "a")
			b := l.Nodes[1].AddPod(ctx, "b")
			for i := 0; i < 4; i++ {
				rtt, err := a.Ping(ctx, b.EchoAddr(), 64, false)
				t.Logf("ping %d: %v %v", i, rtt, err)
			}
		})
	}
}
