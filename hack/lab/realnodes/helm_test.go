package realnodes

import (
	"context"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/routemode/routemode/api/v1alpha1"
	"github.com/routemode/routemode/hack/lab"
	"github.com/routemode/routemode/internal/helmchart"
)

// testHelm installs routemode again, with Helm's Go SDK instead of
// kubectl apply -k, on the nodes the uninstall phase left (a reinstall,
// whose agents adopt what the last one left on the nodes): the chart with
// its default values (VXLAN, legacy host routing); it waits for the agent
// DaemonSet and the operator Deployment to be available and the
// RoutingMode Complete, then `helm upgrade`s to native routing with direct
// routes and eBPF host routing (the switch a Cilium user makes by changing
// values) and waits for that to be Complete, then `helm uninstall`s and
// checks the release's objects and pods are gone and the CRDs stay.
func testHelm(t *testing.T, hr *harness) {
	l, root := hr.l, hr.root
	ctx := context.Background()
	c, err := l.Client()
	if err != nil {
		t.Fatal(err)
	}
	ch, err := helmchart.Load(root)
	if err != nil {
		t.Fatal(err)
	}
	h, err := helmchart.Connect(l.Kubeconfig(), lab.Namespace)
	if err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	// --wait: Helm's status watcher until the DaemonSet and the Deployment
	// are rolled out, which needs the images the lab loaded.
	if _, err := h.Install(ctx, ch, nil, 5*time.Minute); err != nil {
		out, _ := l.Kubectl("get", "pods", "-A", "-o", "wide")
		t.Fatalf("%v\n%s", err, out)
	}
	t.Logf("helm install --wait returned after %s", time.Since(start).Round(time.Second))
	if err := l.WaitInstalled(time.Minute); err != nil {
		t.Fatal(err)
	}
	rm := waitComplete(ctx, t, l, c, v1alpha1.ActualRoutingTunnel, "legacy", len(l.Nodes))
	t.Logf("installed and the RoutingMode Complete (%s) %s after helm install", rm.Spec.Tunnel, time.Since(start).Round(time.Second))

	start = time.Now()
	native := map[string]any{"routingMode": "native", "autoDirectNodeRoutes": true, "ipv4NativeRoutingCIDR": lab.ClusterCIDR.String(),
		"bpf": map[string]any{"hostLegacyRouting": false}}
	if _, err := h.Upgrade(ctx, ch, native, 0); err != nil {
		t.Fatal(err)
	}
	rm = waitComplete(ctx, t, l, c, v1alpha1.ActualRoutingNative, "bpf", len(l.Nodes))
	if rm.Spec.NativeRoutingCIDR != lab.ClusterCIDR.String() || !rm.Spec.AutoDirectNodeRoutes {
		t.Errorf("after helm upgrade the RoutingMode asks for %+v", rm.Spec)
	}
	t.Logf("helm upgrade to native routing and eBPF host routing Complete after %s", time.Since(start).Round(time.Second))

	start = time.Now()
	if err := h.Uninstall(3 * time.Minute); err != nil {
		t.Fatal(err)
	}
	t.Logf("helm uninstall --wait took %s", time.Since(start).Round(time.Second))
	for _, o := range []struct {
		obj client.Object
		key client.ObjectKey
	}{
		{&appsv1.DaemonSet{}, client.ObjectKey{Namespace: lab.Namespace, Name: "routemode-agent"}},
		{&appsv1.Deployment{}, client.ObjectKey{Namespace: lab.Namespace, Name: "routemode-operator"}},
		{&v1alpha1.RoutingMode{}, client.ObjectKey{Name: "default"}},
	} {
		if err := c.Get(ctx, o.key, o.obj); !apierrors.IsNotFound(err) {
			t.Errorf("%T %s after helm uninstall: %v, want not found", o.obj, o.key, err)
		}
	}
	// The DaemonSet's and the Deployment's pods go with their owners,
	// through the controller-manager's garbage collector.
	deadline := time.Now().Add(2 * time.Minute)
	for {
		out, err := l.Kubectl("-n", lab.Namespace, "get", "pods", "-o", "name")
		if err == nil && strings.TrimSpace(out) == "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("pods left in %s 2m after helm uninstall: %s %v", lab.Namespace, out, err)
		}
		time.Sleep(time.Second)
	}
	if out, err := l.Kubectl("get", "crd", "routingmodes.routemode.io", "routingnodes.routemode.io", "-o", "name"); err != nil {
		t.Errorf("CRDs after helm uninstall: %v %s (Helm keeps what crds/ installed)", err, out)
	}
}

// waitComplete waits for the RoutingMode's rollout to be Ready at its
// generation, and checks every node reports sending routing with host.
func waitComplete(ctx context.Context, t *testing.T, l *lab.Lab, c client.Client, routing v1alpha1.ActualRouting, host string, nodes int) *v1alpha1.RoutingMode {
	t.Helper()
	rm, err := l.WaitRollout(ctx, c, 5*time.Minute, nil)
	if err != nil {
		out, _ := l.Kubectl("get", "routingmode,routingnodes,pods", "-A", "-o", "wide")
		t.Fatalf("%v\n%s", err, out)
	}
	if rm.Status.Phase != v1alpha1.PhaseComplete || rm.Status.Datapath.Routing != routing || rm.Status.Datapath.HostRouting != host ||
		rm.Status.Nodes.Updated != int32(nodes) || rm.Status.Nodes.Total != int32(nodes) {
		t.Fatalf("RoutingMode phase %s, routing %s, host routing %s, %d/%d nodes updated; want Complete, %s, %s, %d/%d", rm.Status.Phase,
			rm.Status.Datapath.Routing, rm.Status.Datapath.HostRouting, rm.Status.Nodes.Updated, rm.Status.Nodes.Total, routing, host, nodes, nodes)
	}
	return rm
}
