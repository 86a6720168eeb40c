package netlab

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"

	"github.com/routemode/routemode/api/v1alpha1"
	"github.com/routemode/routemode/internal/privileged"
	"github.com/routemode/routemode/internal/probe"
)

// New builds a lab for a test, which fails without the privileges (see
// internal/privileged); t.Cleanup removes the lab. It first sweeps what
// labs of crashed test processes left behind.
func New(t testing.TB, spec Spec) *Lab {
	t.Helper()
	privileged.Require(t, "creates network namespaces, veth pairs and bridges")
	if err := Sweep(); err != nil {
		t.Logf("removing crashed labs' leftovers: %v", err)
	}
	if spec.Log.GetSink() == nil {
		spec.Log = testr.NewWithInterface(t, testr.Options{Verbosity: 0})
	}
	// Registered first, so it runs after the cleanups the test registers
	// while the lab is built (HostRouter's, say), which still need the
	// lab's namespaces.
	var l *Lab
	t.Cleanup(func() {
		if l == nil {
			return
		}
		if err := l.Close(); err != nil {
			t.Errorf("removing lab %s: %v", l.ID, err)
		}
	})
	var err error
	if l, err = Build(spec); err != nil {
		t.Fatalf("building the lab: %v", err)
	}
	t.Logf("lab %s: %d nodes on %s", l.ID, len(l.Nodes), UnderlayPrefix)
	return l
}

// Context is a test context bounded by d.
func Context(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// StepTimeout bounds one rollout step in tests.
const StepTimeout = 20 * time.Second

// MustStep runs Lab.Step on nodes (of one lab) and fails t if they do not
// converge within StepTimeout.
func MustStep(t testing.TB, ctx context.Context, nodes []*Node, d v1alpha1.NodeDatapath) map[string][]string {
	t.Helper()
	changes, err := nodes[0].Lab.Step(ctx, nodes, d, StepTimeout)
	if err != nil {
		t.Fatal(err)
	}
	return changes
}

// MustConverge runs Lab.Converge on nodes (of one lab) and fails t if they
// do not converge within StepTimeout.
func MustConverge(t testing.TB, ctx context.Context, nodes []*Node) map[string][]string {
	t.Helper()
	changes, err := nodes[0].Lab.Converge(ctx, nodes, StepTimeout)
	if err != nil {
		t.Fatal(err)
	}
	return changes
}

// MustSteps is RolloutSteps, failing t on error.
func MustSteps(t testing.TB, from, to v1alpha1.NodeDatapath) Steps {
	t.Helper()
	s, err := RolloutSteps(from, to)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// MustAddPod is Node.AddPod, failing t on error.
func MustAddPod(t testing.TB, ctx context.Context, n *Node, name string) *Pod {
	t.Helper()
	p, err := n.AddPod(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// MustStreams is StartStreams, failing t on error; t.Cleanup stops them.
func MustStreams(t testing.TB, pods []*Pod, rate int) *Streams {
	t.Helper()
	s, err := StartStreams(pods, rate)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Stop() })
	return s
}

// MustCapture is Lab.Capture, failing t on error; t.Cleanup stops it.
func MustCapture(t testing.TB, l *Lab) *probe.Capture {
	t.Helper()
	c, err := l.Capture()
	if err != nil {
		t.Fatalf("starting capture: %v", err)
	}
	t.Cleanup(func() { c.Stop() })
	return c
}

// IP runs `ip args...` in the node's namespace and returns its standard
// output; its standard error, which also carries complaints about other
// namespaces (a peer's namespace deleted meanwhile), only in the error.
func IP(n *Node, args ...string) (string, error) {
	var stderr strings.Builder
	cmd := exec.Command("ip", append([]string{"-n", n.NSName}, args...)...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		err = fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, stderr.String())
	}
	return string(out), err
}

// MustCNI is Node.CNI, failing t if the plugin could not be run.
func MustCNI(t testing.TB, ctx context.Context, n *Node, command, containerID, netnsPath, ifName string, stdin []byte) CNIResult {
	t.Helper()
	res, err := n.CNI(ctx, command, containerID, netnsPath, ifName, stdin)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// MustPluginStdin is Node.PluginStdin, failing t on error.
func MustPluginStdin(t testing.TB, n *Node) []byte {
	t.Helper()
	b, err := n.PluginStdin()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// MustPodNS is Node.NewPodNS, failing t on error.
func MustPodNS(t testing.TB, n *Node, name string) string {
	t.Helper()
	name, err := n.NewPodNS(name)
	if err != nil {
		t.Fatal(err)
	}
	return name
}
