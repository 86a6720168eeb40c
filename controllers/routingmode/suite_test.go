package routingmode

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/routemode/routemode/api/v1alpha1"
	"github.com/routemode/routemode/internal/testenv"
)

var env *testenv.Env

func TestMain(m *testing.M) {
	ctrl.SetLogger(zap.New(zap.UseDevMode(true)))
	testenv.Main(m, &env)
}

// startOperator runs the reconciler in a manager until stop is called;
// opts adjust the reconciler first.
func startOperator(t *testing.T, opts ...func(*Reconciler)) (stop func()) {
	t.Helper()
	// The operator binary's default client rate limit (--kube-api-qps).
	cfg := rest.CopyConfig(env.Config)
	cfg.QPS, cfg.Burst = 100, 200
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:  env.Scheme,
		Metrics: metricsserver.Options{BindAddress: "0"},
		Cache:   CacheOptions(),
	})
	if err != nil {
		t.Fatal(err)
	}
	r := &Reconciler{Client: mgr.GetClient(), Recorder: mgr.GetEventRecorder("routemode-operator"), Now: time.Now}
	for _, o := range opts {
		o(r)
	}
	skip := true
	if err := r.SetupWithManager(mgr, controller.Options{SkipNameValidation: &skip}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("operator: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// agents stands in for the node agents (the real one is tested on network
// namespaces): it applies each RoutingNode's spec at once and reports
// status the way the agent does, unless a node is held or made to fail.
type agents struct {
	t  *testing.T
	c  client.Client
	mu sync.Mutex
	// held nodes do not report, as if their agent were slow.
	held map[string]bool
	// holdAt holds a node once it is asked for that step.
	holdAt map[string]v1alpha1.RolloutStep
	// failing nodes report their peers unreachable after a Switch.
	failing map[string]bool
	// seen is each node's sequence of steps, as the agent saw them.
	seen map[string][]v1alpha1.RolloutStep
	caps v1alpha1.NodeCapabilities
}

func startAgents(t *testing.T) *agents {
	a := &agents{t: t, c: env.Client, held: map[string]bool{}, holdAt: map[string]v1alpha1.RolloutStep{}, failing: map[string]bool{}, seen: map[string][]v1alpha1.RolloutStep{},
		caps: v1alpha1.NodeCapabilities{Kernel: "6.18.0", VXLAN: true, BPFHostRouting: true, TCX: true}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			a.reportAll(ctx)
			time.Sleep(20 * time.Millisecond)
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	return a
}

func (a *agents) set(m map[string]bool, node string, v bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	m[node] = v
}

func (a *agents) holdAtStep(node string, step v1alpha1.RolloutStep) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if step == "" {
		delete(a.holdAt, node)
		return
	}
	a.holdAt[node] = step
}

// waitSteps waits until the agent on node saw want.
func (a *agents) waitSteps(node string, want ...v1alpha1.RolloutStep) {
	a.t.Helper()
	deadline := time.Now().Add(waitLimit)
	for time.Now().Before(deadline) {
		if slices.Equal(a.steps(node), want) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	a.t.Errorf("%s went through %v, want %v", node, a.steps(node), want)
}

func (a *agents) steps(node string) []v1alpha1.RolloutStep {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.seen[node])
}

func (a *agents) reportAll(ctx context.Context) {
	var list v1alpha1.RoutingNodeList
	if err := a.c.List(ctx, &list); err != nil {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for i := range list.Items {
		rn := &list.Items[i]
		if a.held[rn.Name] {
			continue
		}
		if err := a.report(ctx, rn, list.Items); err != nil && ctx.Err() == nil {
			a.t.Logf("stand-in agent on %s: %v", rn.Name, err)
		}
	}
}

func (a *agents) report(ctx context.Context, rn *v1alpha1.RoutingNode, all []v1alpha1.RoutingNode) error {
	base := rn.DeepCopy()
	st := &rn.Status
	st.Capabilities = &a.caps
	healthy := !(a.failing[rn.Name] && rn.Spec.Step == v1alpha1.StepSwitch)
	st.PeerSummary = &v1alpha1.PeerSummary{Total: int32(len(all) - 1)}
	if !healthy {
		st.PeerSummary.Probed, st.PeerSummary.Unreachable = st.PeerSummary.Total, st.PeerSummary.Total
	}
	// A node held at a step still reports its kernel and peers, like an
	// agent that is slow to apply.
	if dp := rn.Spec.Datapath; dp != nil && a.holdAt[rn.Name] != rn.Spec.Step {
		if st.ObservedGeneration != rn.Generation {
			a.seen[rn.Name] = append(a.seen[rn.Name], rn.Spec.Step)
		}
		st.ObservedGeneration = rn.Generation
		st.Datapath = v1alpha1.NodeDatapathStatus{SendMode: dp.SendMode, HostRouting: dp.HostRouting}
		meta.SetStatusCondition(&st.Conditions, metav1.Condition{Type: v1alpha1.ConditionDatapathApplied, Status: metav1.ConditionTrue,
			Reason: "Applied", ObservedGeneration: rn.Generation})
		peers := metav1.Condition{Type: v1alpha1.ConditionPeersHealthy, Status: metav1.ConditionTrue, Reason: "AllPeersReachable", ObservedGeneration: rn.Generation}
		if !healthy {
			peers.Status, peers.Reason, peers.Message = metav1.ConditionFalse, "PeersUnreachable", "no answer from any peer's health endpoint"
		}
		meta.SetStatusCondition(&st.Conditions, peers)
	}
	return a.c.Status().Patch(ctx, rn, client.MergeFrom(base))
}

// addNode registers a Node the way a kubelet and the node IPAM would.
func addNode(t *testing.T, name, podCIDR, ip string) {
	t.Helper()
	ctx := context.Background()
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.NodeSpec{PodCIDR: podCIDR, PodCIDRs: []string{podCIDR}}}
	if err := env.Client.Create(ctx, n); err != nil {
		t.Fatal(err)
	}
	n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: ip}}
	if err := env.Client.Status().Update(ctx, n); err != nil {
		t.Fatal(err)
	}
}

// kstatusOf computes what Flux's health check sees.
func kstatusOf(t *testing.T, rm *v1alpha1.RoutingMode) status.Status {
	t.Helper()
	u, err := runtime.DefaultUnstructuredConverter.ToUnstructured(rm)
	if err != nil {
		t.Fatal(err)
	}
	res, err := status.Compute(&unstructured.Unstructured{Object: u})
	if err != nil {
		t.Fatal(err)
	}
	return res.Status
}

// cleanCluster removes every object a test made, so tests do not leak into
// each other through the one API server.
func cleanCluster(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	for _, obj := range []client.Object{&v1alpha1.RoutingMode{}, &v1alpha1.RoutingNode{}, &corev1.Node{}} {
		if err := env.Client.DeleteAllOf(ctx, obj); err != nil {
			t.Errorf("cleaning up %T: %v", obj, err)
		}
	}
	deadline := time.Now().Add(waitLimit)
	for time.Now().Before(deadline) {
		var rms v1alpha1.RoutingModeList
		var rns v1alpha1.RoutingNodeList
		var ns corev1.NodeList
		if env.Client.List(ctx, &rms) == nil && env.Client.List(ctx, &rns) == nil && env.Client.List(ctx, &ns) == nil &&
			len(rms.Items)+len(rns.Items)+len(ns.Items) == 0 {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Errorf("objects left after cleanup")
}
