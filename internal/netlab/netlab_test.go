package netlab

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/routemode/routemode/agent/nsutil"
	"github.com/routemode/routemode/api/v1alpha1"
	"github.com/routemode/routemode/internal/privileged"
)

func namespaces(prefix string) []string {
	var out []string
	entries, _ := os.ReadDir(nsutil.RunDir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) {
			out = append(out, e.Name())
		}
	}
	return out
}

// A lab with agents, CNI pods and health endpoints, built inside a subtest:
// the subtest's cleanup removes every namespace (and with them every
// device) and the state file.
func TestLabLeavesNothing(t *testing.T) {
	var id, stateFile string
	t.Run("lab", func(t *testing.T) {
		l := New(t, Spec{Nodes: 2, CNI: true, Agents: true, RPFilter: 1})
		id, stateFile = l.ID, l.state.path
		ctx := Context(t, time.Minute)
		if _, err := l.Step(ctx, l.Nodes, Tunnel, 20*time.Second); err != nil {
			t.Fatal(err)
		}
		a, err := l.Nodes[0].AddPod(ctx, "a")
		if err != nil {
			t.Fatal(err)
		}
		b, err := l.Nodes[1].AddPod(ctx, "b")
		if err != nil {
			t.Fatal(err)
		}
		// The first probes wait for the pods' and the nodes' neighbours to
		// resolve, which a machine short of CPU may take more than one
		// probe's timeout to do.
		for _, err := a.Ping(ctx, b.EchoAddr(), 64, false); err != nil; _, err = a.Ping(ctx, b.EchoAddr(), 64, false) {
			if ctx.Err() != nil {
				t.Fatalf("pod a → pod b: %v", err)
			}
		}
		if got := namespaces(id); len(got) != 7 { // underlay, 2 nodes, 2 health, 2 pods
			t.Errorf("lab namespaces: %v", got)
		}
	})
	if left := namespaces(id); len(left) != 0 {
		t.Errorf("lab %s left namespaces behind: %v", id, left)
	}
	if _, err := os.Stat(stateFile); !os.IsNotExist(err) {
		t.Errorf("state file %s still exists: %v", stateFile, err)
	}
}

// Explicit datapath operations on a point-to-point underlay: pods wired by
// agent/podnet reach each other natively and through the tunnel, with the
// tunnel's route MTU in their default route.
func TestExplicitDatapath(t *testing.T) {
	l := New(t, Spec{Underlay: PointToPoint})
	ctx := Context(t, time.Minute)
	var pods []*Pod
	for _, n := range l.Nodes {
		p, err := n.AddPodDirect("p")
		if err != nil {
			t.Fatal(err)
		}
		pods = append(pods, p)
	}
	for _, mode := range []struct {
		name string
		d    v1alpha1.NodeDatapath
		mtu  int
	}{{"native", Native, 1500}, {"tunnel", Tunnel, 1450}} {
		for _, n := range l.Nodes {
			if _, err := n.ApplyDatapath(ctx, mode.d); err != nil {
				t.Fatalf("%s: %s: %v", mode.name, n.Name, err)
			}
		}
		if _, err := pods[0].Ping(ctx, pods[1].EchoAddr(), mode.mtu-28, true); err != nil {
			t.Errorf("%s: %d-byte DF probe: %v", mode.name, mode.mtu-28, err)
		}
		if _, err := pods[0].Ping(ctx, pods[1].EchoAddr(), mode.mtu-28+1, true); err == nil {
			t.Errorf("%s: a probe above the route MTU left the pod", mode.name)
		}
	}
}

// A lab whose process died is removed by the next Sweep, from its state
// file alone.
func TestSweepRemovesCrashedLab(t *testing.T) {
	privileged.Require(t, "creates network namespaces")
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	name := "rmlsweep" + strings.ReplaceAll(t.Name(), "/", "")
	n, err := nsutil.Create(name)
	if err != nil {
		t.Fatal(err)
	}
	n.Close()
	t.Cleanup(func() { _ = nsutil.Delete(name) })
	dir := t.TempDir()
	if err := os.MkdirAll(StateRoot, 0o700); err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(record{PID: dead.Process.Pid, Namespaces: []string{name}, Dirs: []string{dir}})
	file := filepath.Join(StateRoot, name+".json")
	if err := os.WriteFile(file, b, 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.Remove(file) })
	if err := Sweep(); err != nil {
		t.Fatal(err)
	}
	if nsutil.Exists(name) {
		t.Errorf("namespace %s survived the sweep", name)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("directory %s survived the sweep: %v", dir, err)
	}
	if _, err := os.Stat(file); !os.IsNotExist(err) {
		t.Errorf("state file survived the sweep: %v", err)
	}
}
