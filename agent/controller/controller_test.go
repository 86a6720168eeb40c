package controller

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/routemode/routemode/agent/node"
	"github.com/routemode/routemode/api/v1alpha1"
	"github.com/routemode/routemode/internal/nodefacts"
	"github.com/routemode/routemode/internal/peertable"
	"github.com/routemode/routemode/internal/testenv"
)

var env *testenv.Env

func TestMain(m *testing.M) {
	ctrl.SetLogger(zap.New(zap.UseDevMode(true)))
	testenv.Main(m, &env)
}

// fakeAgent answers like the agent: observed generation, a condition and
// the summary of a peer table whose RTTs jitter on every reconcile.
type fakeAgent struct {
	mu   sync.Mutex
	reqs []node.Request
	rtt  int64
}

func (f *fakeAgent) Reconcile(_ context.Context, req node.Request) node.Result {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reqs = append(f.reqs, req)
	f.rtt++
	st := v1alpha1.RoutingNodeStatus{ObservedGeneration: req.Generation, NodeIP: req.Self.IP.String(), VTEPMAC: "0e:72:c0:a8:00:78",
		Conditions: req.Previous.Conditions}
	meta.SetStatusCondition(&st.Conditions, metav1.Condition{Type: v1alpha1.ConditionDatapathApplied, Status: metav1.ConditionTrue,
		Reason: "Applied", Message: "ok", ObservedGeneration: req.Generation})
	var table []peertable.Row
	for _, p := range req.Peers {
		table = append(table, peertable.Row{Node: p.Name, NodeIP: p.IP.String(), Direct: true, Probed: true, Reachable: true, RTTMicroseconds: 400 + f.rtt})
	}
	st.PeerSummary = peertable.Summarize(table)
	return node.Result{Status: st, RequeueAfter: time.Hour}
}

func (f *fakeAgent) last() (node.Request, int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.reqs) == 0 {
		return node.Request{}, 0
	}
	return f.reqs[len(f.reqs)-1], len(f.reqs)
}

func makeNode(t *testing.T, name, ip, cidr string) {
	t.Helper()
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.NodeSpec{PodCIDR: cidr}}
	if cidr != "" {
		n.Spec.PodCIDRs = []string{cidr}
	}
	ctx := t.Context()
	if err := env.Client.Create(ctx, n); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Client.Delete(context.Background(), n) })
	if ip != "" {
		n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeHostName, Address: name}, {Type: corev1.NodeInternalIP, Address: ip}}
		if err := env.Client.Status().Update(ctx, n); err != nil {
			t.Fatal(err)
		}
	}
}

func makeRoutingNode(t *testing.T, name string, dp *v1alpha1.NodeDatapath) *v1alpha1.RoutingNode {
	t.Helper()
	rn := &v1alpha1.RoutingNode{ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: v1alpha1.RoutingNodeSpec{NodeName: name, Step: v1alpha1.StepSteady, Datapath: dp}}
	if err := env.Client.Create(t.Context(), rn); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Client.Delete(context.Background(), rn) })
	return rn
}

var tunnel = &v1alpha1.NodeDatapath{Tunnel: v1alpha1.TunnelVXLAN, TunnelPort: 8472, SendMode: v1alpha1.SendTunnel,
	RouteMTU: v1alpha1.RouteMTUTunnel, HostRouting: v1alpha1.HostRoutingLegacy}

func TestReconcileWritesStatusOnlyWhenChanged(t *testing.T) {
	ctx := t.Context()
	makeNode(t, "a-1", "192.168.0.120", "10.0.0.0/24")
	makeNode(t, "a-2", "192.168.0.130", "10.0.1.0/24")
	makeNode(t, "a-3", "192.168.0.140", "") // no podCIDR: not a peer
	makeNode(t, "a-4", "", "10.0.3.0/24")   // no InternalIP: not a peer
	makeRoutingNode(t, "a-1", tunnel)
	makeRoutingNode(t, "a-2", tunnel)

	agent := &fakeAgent{}
	r := &Reconciler{Client: env.Client, NodeName: "a-1", Agent: agent}
	res, err := r.Reconcile(ctx, reconcile.Request{NamespacedName: types.NamespacedName{Name: "a-1"}})
	if err != nil || res.RequeueAfter != time.Hour {
		t.Fatalf("reconcile: %v %v", res, err)
	}
	req, _ := agent.last()
	wantPeers := []node.Peer{{Name: "a-2", IP: netip.MustParseAddr("192.168.0.130"), PodCIDR: netip.MustParsePrefix("10.0.1.0/24")}}
	if req.Self.IP != netip.MustParseAddr("192.168.0.120") || req.Self.PodCIDR != netip.MustParsePrefix("10.0.0.0/24") ||
		len(req.Peers) != 1 || req.Peers[0] != wantPeers[0] || req.Datapath == nil || req.Generation != 1 {
		t.Fatalf("request %+v, want self a-1 and the one complete peer %+v", req, wantPeers)
	}
	var rn v1alpha1.RoutingNode
	if err := env.Client.Get(ctx, client.ObjectKey{Name: "a-1"}, &rn); err != nil {
		t.Fatal(err)
	}
	if rn.Status.ObservedGeneration != rn.Generation || rn.Status.PeerSummary == nil || rn.Status.PeerSummary.Total != 1 {
		t.Fatalf("status %+v", rn.Status)
	}
	// Same status but for RTT jitter in the agent's table: no write.
	rv := rn.ResourceVersion
	if _, err := r.Reconcile(ctx, reconcile.Request{}); err != nil {
		t.Fatal(err)
	}
	if err := env.Client.Get(ctx, client.ObjectKey{Name: "a-1"}, &rn); err != nil {
		t.Fatal(err)
	}
	if rn.ResourceVersion != rv {
		t.Errorf("an unchanged status was written again")
	}
	// A new generation is written.
	rn.Spec.Datapath = tunnel.DeepCopy()
	rn.Spec.Datapath.LooseRPFilter = true
	if err := env.Client.Update(ctx, &rn); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Reconcile(ctx, reconcile.Request{}); err != nil {
		t.Fatal(err)
	}
	if err := env.Client.Get(ctx, client.ObjectKey{Name: "a-1"}, &rn); err != nil {
		t.Fatal(err)
	}
	if rn.Status.ObservedGeneration != 2 || rn.Generation != 2 {
		t.Errorf("generation %d, observed %d", rn.Generation, rn.Status.ObservedGeneration)
	}
}

// TestFirstReconcileLogsAdoption: the first reconcile since the agent
// started logs the changes it made to the kernel it found (the chaos suite
// reads it after killing agents), and later reconciles do not repeat it.
func TestFirstReconcileLogsAdoption(t *testing.T) {
	makeNode(t, "b-1", "192.168.0.120", "10.0.0.0/24")
	makeRoutingNode(t, "b-1", tunnel)
	var buf bytes.Buffer
	ctx := ctrl.LoggerInto(t.Context(), zap.New(zap.WriteTo(&buf)))
	r := &Reconciler{Client: env.Client, NodeName: "b-1", Agent: &fakeAgent{}}
	for range 2 {
		if _, err := r.Reconcile(ctx, reconcile.Request{}); err != nil {
			t.Fatal(err)
		}
	}
	if n := strings.Count(buf.String(), `"msg":"Adopted the node's kernel state","generation":1,"step":"Steady","changes":[]`); n != 1 {
		t.Errorf("the adoption line was logged %d times; want once:\n%s", n, buf.String())
	}
}

func TestMissingRoutingNodeIsNoError(t *testing.T) {
	agent := &fakeAgent{}
	r := &Reconciler{Client: env.Client, NodeName: "nobody", Agent: agent}
	if _, err := r.Reconcile(t.Context(), reconcile.Request{}); err != nil {
		t.Fatal(err)
	}
	if _, n := agent.last(); n != 0 {
		t.Errorf("agent called without a RoutingNode")
	}
}

// TestManagerTriggers runs the controller in a manager with the agent's
// cache: a spec change, a peer's address change and a kernel event each
// reach the agent, and the cache holds only facts of Nodes and no other
// node's RoutingNode.
func TestManagerTriggers(t *testing.T) {
	makeNode(t, "m-1", "192.168.0.120", "10.0.0.0/24")
	makeNode(t, "m-2", "192.168.0.130", "10.0.1.0/24")
	rn := makeRoutingNode(t, "m-1", tunnel)
	makeRoutingNode(t, "m-2", tunnel)
	// m-2 as a kubelet reports it: labels, conditions, images.
	var peerNode corev1.Node
	if err := env.Client.Get(t.Context(), client.ObjectKey{Name: "m-2"}, &peerNode); err != nil {
		t.Fatal(err)
	}
	peerNode.Labels = map[string]string{"kubernetes.io/hostname": "m-2"}
	if err := env.Client.Update(t.Context(), &peerNode); err != nil {
		t.Fatal(err)
	}
	peerNode.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}}
	peerNode.Status.Images = []corev1.ContainerImage{{Names: []string{"registry.k8s.io/pause:3.10"}, SizeBytes: 1 << 20}}
	if err := env.Client.Status().Update(t.Context(), &peerNode); err != nil {
		t.Fatal(err)
	}

	mgr, err := ctrl.NewManager(env.Config, ctrl.Options{Scheme: env.Scheme, Metrics: metricsserver.Options{BindAddress: "0"},
		Cache: CacheOptions("m-1")})
	if err != nil {
		t.Fatal(err)
	}
	agent := &fakeAgent{}
	kernel := make(chan event.GenericEvent, 1)
	r := &Reconciler{Client: mgr.GetClient(), NodeName: "m-1", Agent: agent, Kernel: kernel}
	skip := true
	if err := r.SetupWithManager(mgr, controller.Options{SkipNameValidation: &skip}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	waitFor := func(what string, ok func(node.Request, int) bool) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for time.Now().Before(deadline) {
			if req, n := agent.last(); n > 0 && ok(req, n) {
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
		req, n := agent.last()
		t.Fatalf("%s: agent saw %d requests, last %+v", what, n, req)
	}
	waitFor("initial reconcile", func(req node.Request, _ int) bool { return req.Generation == 1 })

	var cur v1alpha1.RoutingNode
	if err := env.Client.Get(t.Context(), client.ObjectKeyFromObject(rn), &cur); err != nil {
		t.Fatal(err)
	}
	// A merge patch: the agent writes the status concurrently.
	base := cur.DeepCopy()
	cur.Spec.Datapath = tunnel.DeepCopy()
	cur.Spec.Datapath.LooseRPFilter = true
	if err := env.Client.Patch(t.Context(), &cur, client.MergeFrom(base)); err != nil {
		t.Fatal(err)
	}
	waitFor("spec change", func(req node.Request, _ int) bool { return req.Generation == 2 && req.Datapath.LooseRPFilter })

	var cached corev1.Node
	if err := mgr.GetCache().Get(t.Context(), client.ObjectKey{Name: "m-2"}, &cached); err != nil {
		t.Fatal(err)
	}
	if why := nodefacts.Check(&cached); why != "" {
		t.Errorf("the agent's cache holds a full Node: %s", why)
	}
	var cachedRNs v1alpha1.RoutingNodeList
	if err := mgr.GetCache().List(t.Context(), &cachedRNs); err != nil {
		t.Fatal(err)
	}
	if len(cachedRNs.Items) != 1 || cachedRNs.Items[0].Name != "m-1" {
		t.Errorf("the agent's cache holds %d RoutingNodes, want only its own", len(cachedRNs.Items))
	}

	peerNode.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "192.168.0.131"}}
	if err := env.Client.Status().Update(t.Context(), &peerNode); err != nil {
		t.Fatal(err)
	}
	waitFor("peer address change", func(req node.Request, _ int) bool {
		return len(req.Peers) == 1 && req.Peers[0].IP == netip.MustParseAddr("192.168.0.131")
	})

	_, before := agent.last()
	kernel <- event.GenericEvent{}
	waitFor("kernel event", func(_ node.Request, n int) bool { return n > before })
}

// TestReadyFollowsAppliedGeneration checks the agent's readiness: not ready
// before its first reconcile, ready once the generation it reads is
// applied, not ready again when the spec changes until it is applied.
func TestReadyFollowsAppliedGeneration(t *testing.T) {
	ctx := t.Context()
	makeNode(t, "r-1", "192.168.0.120", "10.0.0.0/24")
	rn := makeRoutingNode(t, "r-1", tunnel)
	r := &Reconciler{Client: env.Client, NodeName: "r-1", Agent: &fakeAgent{}}
	probe := httptest.NewRequest(http.MethodGet, "/readyz", nil)
	if err := r.Ready(probe); err == nil || !strings.Contains(err.Error(), "generation 1 is not applied") {
		t.Fatalf("before the first reconcile: %v, want not ready", err)
	}
	if _, err := r.Reconcile(ctx, reconcile.Request{}); err != nil {
		t.Fatal(err)
	}
	if err := r.Ready(probe); err != nil {
		t.Fatalf("after applying generation 1: %v", err)
	}
	if err := env.Client.Get(ctx, client.ObjectKeyFromObject(rn), rn); err != nil {
		t.Fatal(err)
	}
	rn.Spec.Datapath = tunnel.DeepCopy()
	rn.Spec.Datapath.LooseRPFilter = true
	if err := env.Client.Update(ctx, rn); err != nil {
		t.Fatal(err)
	}
	if err := r.Ready(probe); err == nil || !strings.Contains(err.Error(), "generation 2 is not applied") {
		t.Fatalf("after a spec change: %v, want not ready", err)
	}
	if _, err := r.Reconcile(ctx, reconcile.Request{}); err != nil {
		t.Fatal(err)
	}
	if err := r.Ready(probe); err != nil {
		t.Fatalf("after applying generation 2: %v", err)
	}
}

// scriptedAgent reports the peer table it is given.
type scriptedAgent struct{ table []peertable.Row }

func (a *scriptedAgent) Reconcile(_ context.Context, req node.Request) node.Result {
	return node.Result{Status: v1alpha1.RoutingNodeStatus{ObservedGeneration: req.Generation, PeerSummary: peertable.Summarize(a.table)}}
}

// staleClient reads the RoutingNode as it was before the agent's last
// status write, as a cache that has not caught up with it yet.
type staleClient struct {
	client.Client
	stale *v1alpha1.RoutingNode
}

func (c staleClient) Get(ctx context.Context, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
	if rn, ok := obj.(*v1alpha1.RoutingNode); ok {
		c.stale.DeepCopyInto(rn)
		return nil
	}
	return c.Client.Get(ctx, key, obj, opts...)
}

// TestStatusNeverMixesWrites: a status written from a cache that lacks the
// agent's own last write must not leave that write's fields behind. A
// peer counted unreachable and then gone left the API server saying the
// node misses a peer, which held the rollout until the next resync (the
// 10 s seen when the chaos suite removes a node). The write fails instead,
// and the retry on a fresh read writes the whole status.
func TestStatusNeverMixesWrites(t *testing.T) {
	ctx := t.Context()
	makeNode(t, "s-1", "192.168.0.120", "10.0.0.0/24")
	makeRoutingNode(t, "s-1", tunnel)
	reach := func(name string, ok bool) peertable.Row {
		return peertable.Row{Node: name, NodeIP: "192.168.0.1", Direct: true, Probed: true, Reachable: ok}
	}
	agent := &scriptedAgent{table: []peertable.Row{reach("s-2", true), reach("s-3", true)}}
	r := &Reconciler{Client: env.Client, NodeName: "s-1", Agent: agent}
	read := func() *v1alpha1.RoutingNode {
		t.Helper()
		var rn v1alpha1.RoutingNode
		if err := env.Client.Get(ctx, client.ObjectKey{Name: "s-1"}, &rn); err != nil {
			t.Fatal(err)
		}
		return &rn
	}
	if _, err := r.Reconcile(ctx, reconcile.Request{}); err != nil {
		t.Fatal(err)
	}
	before := read()
	agent.table = []peertable.Row{reach("s-2", true), reach("s-3", false)}
	if _, err := r.Reconcile(ctx, reconcile.Request{}); err != nil {
		t.Fatal(err)
	}
	unreachable := read().Status.PeerSummary
	if unreachable.Unreachable != 1 {
		t.Fatalf("after s-3 stopped answering: %+v", unreachable)
	}

	agent.table = []peertable.Row{reach("s-2", true)} // s-3 is gone
	stale := &Reconciler{Client: staleClient{Client: env.Client, stale: before}, NodeName: "s-1", Agent: agent}
	if _, err := stale.Reconcile(ctx, reconcile.Request{}); !apierrors.IsConflict(err) {
		t.Errorf("a status written from a stale read: %v; want a conflict", err)
	}
	if got := read().Status.PeerSummary; !equality.Semantic.DeepEqual(got, unreachable) {
		t.Errorf("after the stale write the API server has %+v; want the last whole status %+v", got, unreachable)
	}
	if _, err := r.Reconcile(ctx, reconcile.Request{}); err != nil {
		t.Fatal(err)
	}
	if got, want := read().Status.PeerSummary, peertable.Summarize(agent.table); !equality.Semantic.DeepEqual(got, want) {
		t.Errorf("after the retry the API server has %+v; want %+v", got, want)
	}
}
