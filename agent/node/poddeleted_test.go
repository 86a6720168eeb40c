package node_test

import (
	"context"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"

	"github.com/routemode/routemode/agent/endpoint"
	"github.com/routemode/routemode/agent/node"
	"github.com/routemode/routemode/api/v1alpha1"
	"github.com/routemode/routemode/internal/netlab"
)

// hookRouter runs before ahead of the host routing step, which the agent
// takes between applying its kernel plan and reading the kernel back.
type hookRouter struct {
	node.HostRouter
	before func()
}

func (h hookRouter) Apply(ctx context.Context, req node.HostRoutingRequest) (v1alpha1.HostRouting, []string, error) {
	h.before()
	return h.HostRouter.Apply(ctx, req)
}

// A pod being deleted while its node's agent applies is not a datapath
// the agent failed to apply: reported so, the operator would roll the
// node back in the middle of a rollout (a loaded make test saw that once
// the agent restored pod routes). Deleting a device takes it down first,
// which flushes its routes, and only then removes it from the link list;
// the hook leaves the pod's device in that state, down with its route
// gone, between the agent's apply and its read-back.
func TestPodDeletedWhileApplying(t *testing.T) {
	var hook func()
	l := netlab.New(t, netlab.Spec{Nodes: 2, CNI: true, Agents: true, HostRouter: func(*netlab.Node) node.HostRouter {
		return hookRouter{HostRouter: node.LegacyHostRouter{}, before: func() {
			if hook != nil {
				hook()
				hook = nil
			}
		}}
	}})
	ctx := netlab.Context(t, time.Minute)
	pods := podPerNode(ctx, t, l, netlab.Tunnel)
	n1, going := l.Nodes[0], pods[0]
	// The name routemode-cni gives the pod's device.
	lxc := endpoint.LXCName(going.ContainerID, "eth0")
	hooked := false
	hook = func() {
		if out, err := netlab.IP(n1, "link", "set", "dev", lxc, "down"); err != nil {
			t.Errorf("setting %s down: %v: %s", lxc, err, out)
			return
		}
		hooked = true
	}
	res := n1.Reconcile(ctx)
	if !hooked {
		t.Fatal("the hook did not run during the reconcile: the test injected nothing")
	}
	applied := meta.FindStatusCondition(res.Status.Conditions, v1alpha1.ConditionDatapathApplied)
	if applied == nil || applied.Status != "True" {
		t.Fatalf("a pod's device going away during the reconcile made it report %+v; want DatapathApplied True", applied)
	}
	// The pod is then deleted for real; its next reconcile is clean too.
	stdin, err := n1.PluginStdin()
	if err != nil {
		t.Fatal(err)
	}
	if r, err := n1.CNI(ctx, "DEL", going.ContainerID, going.Path(), "eth0", stdin); err != nil || r.ExitCode != 0 {
		t.Fatalf("CNI DEL of %s: %v (exit %d) %s", going.Name, err, r.ExitCode, r.Stderr)
	}
	res = n1.Reconcile(ctx)
	if applied := meta.FindStatusCondition(res.Status.Conditions, v1alpha1.ConditionDatapathApplied); applied == nil || applied.Status != "True" {
		t.Errorf("after the pod's CNI DEL: %+v; want DatapathApplied True", applied)
	}
	if got := routeTo(t, n1, going.IP.String()+"/32"); got != "" {
		t.Errorf("the deleted pod's route is back: %q", got)
	}
}
