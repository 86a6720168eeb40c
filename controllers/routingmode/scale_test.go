package routingmode

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/events"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/routemode/routemode/api/v1alpha1"
	"github.com/routemode/routemode/controllers/rollout"
	"github.com/routemode/routemode/internal/bounded"
)

// addNodes registers n Nodes with podCIDRs and InternalIPs from a few
// writers at once, as kubelets would.
func addNodes(t *testing.T, n int) {
	t.Helper()
	cfg := rest.CopyConfig(env.Config)
	cfg.QPS = -1 // no client-side limit: the API server's own limits apply
	c, err := client.New(cfg, client.Options{Scheme: env.Scheme})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for w := range 8 {
		wg.Go(func() {
			for i := w; i < n; i += 8 {
				cidr := fmt.Sprintf("10.%d.%d.0/24", i/256, i%256)
				node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("node-%04d", i)},
					Spec: corev1.NodeSpec{PodCIDR: cidr, PodCIDRs: []string{cidr}}}
				if err := c.Create(context.Background(), node); err != nil {
					errs <- err
					return
				}
				node.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: fmt.Sprintf("192.168.%d.%d", i/250, i%250+1)}}
				if err := c.Status().Update(context.Background(), node); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// TestStatusStaysWritableAt5000Nodes is the lab failure of issue 15: with
// hundreds of nodes whose agents had not reported, a message naming every
// one of them made the status too long to write, so the RoutingMode kept
// showing a stale status. At 5,000 nodes the status must be current, with
// every message naming a few nodes and counting the rest.
func TestStatusStaysWritableAt5000Nodes(t *testing.T) {
	cleanCluster(t)
	t.Cleanup(func() { cleanCluster(t) })
	addNodes(t, 5000)
	startOperator(t)
	c := &cluster{t: t}
	c.apply(tunnelSpec)
	rm := c.waitWithin("the preflight to wait for 5,000 agents", 5*time.Minute, func(rm *v1alpha1.RoutingMode) (bool, string) {
		p := meta.FindStatusCondition(rm.Status.Conditions, v1alpha1.ConditionPreflightSucceeded)
		return rm.Status.ObservedGeneration == rm.Generation && p != nil && p.Reason == rollout.ReasonWaitingForAgents && rm.Status.Nodes.Total == 5000,
			fmt.Sprintf("observed %d of %d, %d nodes, preflight %+v", rm.Status.ObservedGeneration, rm.Generation, rm.Status.Nodes.Total, p)
	})
	p := c.expectCondition(rm, v1alpha1.ConditionPreflightSucceeded, metav1.ConditionUnknown, rollout.ReasonWaitingForAgents)
	if want := "node-0000, node-0001, node-0002 and 4997 more"; !strings.Contains(p.Message, want) {
		t.Errorf("preflight message %q does not name a few nodes and count the rest (%q)", p.Message, want)
	}
	for _, cond := range rm.Status.Conditions {
		if len(cond.Message) > bounded.MaxMessage {
			t.Errorf("condition %s has a %d-byte message", cond.Type, len(cond.Message))
		}
	}
}

// TestRefusedStatusDoesNotLeaveTheOldOneStanding writes a status the API
// server must refuse (a condition message over its 32,768-byte limit, as a
// message without bounds once was) and checks what is left is the refusal,
// not the previous status.
func TestRefusedStatusDoesNotLeaveTheOldOneStanding(t *testing.T) {
	cleanCluster(t)
	t.Cleanup(func() { cleanCluster(t) })
	c := &cluster{t: t}
	c.apply(tunnelSpec)
	ctx := context.Background()
	original := c.get()
	meta.SetStatusCondition(&original.Status.Conditions, metav1.Condition{Type: v1alpha1.ConditionReady, Status: metav1.ConditionTrue,
		Reason: "Complete", Message: "all 3 nodes run vxlan tunnel", ObservedGeneration: original.Generation})
	if err := env.Client.Status().Update(ctx, original); err != nil {
		t.Fatal(err)
	}
	next := original.DeepCopy()
	meta.SetStatusCondition(&next.Status.Conditions, metav1.Condition{Type: v1alpha1.ConditionReady, Status: metav1.ConditionFalse,
		Reason: "Preflight", Message: strings.Repeat("node-0001, ", 4000), ObservedGeneration: next.Generation})
	r := &Reconciler{Client: env.Client}
	err := r.patchStatus(ctx, original, next)
	if err == nil {
		t.Fatal("the API server took a 44,000-byte condition message")
	}
	rm := c.get()
	ready := c.expectCondition(rm, v1alpha1.ConditionReady, metav1.ConditionUnknown, ReasonStatusRefused)
	if !strings.Contains(ready.Message, "refused") || len(ready.Message) > bounded.MaxMessage {
		t.Errorf("Ready says %q, want the refusal, bounded", ready.Message)
	}
}

// TestRolloutInChunks caps every reconcile at one RoutingNode write, as
// the default cap of 500 does at 5,000 nodes: the rollout still completes,
// each node goes through each step once, and the status counts only what
// was written.
func TestRolloutInChunks(t *testing.T) {
	c := newCluster(t, 4)
	startOperator(t, func(r *Reconciler) { r.MaxWritesPerReconcile = 1 })
	c.bootstrap(tunnelSpec)
	wide := nativeSpec
	wide.Rollout.MaxUnavailable = new(intstr.FromString("100%"))
	c.apply(wide)
	c.waitReady()
	c.expectNodes(wide)
	for _, n := range []string{"node-1", "node-2", "node-3", "node-4"} {
		c.agents.waitSteps(n, v1alpha1.StepSteady, v1alpha1.StepPrepare, v1alpha1.StepSwitch, v1alpha1.StepFinalize)
	}
}

// TestCreationCappedPerReconcile registers more Nodes than one reconcile
// may write and reads the API server after each pass: a pass creates at
// most its budget of RoutingNodes, plans the rest as nodes whose agents
// have not reported (so a rollout waits for them), and after enough passes
// every Node has its RoutingNode.
func TestCreationCappedPerReconcile(t *testing.T) {
	cleanCluster(t)
	t.Cleanup(func() { cleanCluster(t) })
	addNodes(t, 7)
	rec := events.NewFakeRecorder(100)
	r := &Reconciler{Client: env.Client, Recorder: rec, Now: time.Now}
	ctx := context.Background()
	for pass, want := range []int{3, 6, 7} {
		nodes, created, more, err := r.observeNodes(ctx, nil, 3)
		if err != nil {
			t.Fatal(err)
		}
		// One event per pass names the nodes it added, not one per node.
		if got := len(rec.Events); got != 1 {
			t.Errorf("pass %d: %d events, want 1", pass, got)
		}
		for len(rec.Events) > 0 {
			if ev := <-rec.Events; !strings.Contains(ev, fmt.Sprintf("node-%04d", want-1)) {
				t.Errorf("pass %d: event %q does not name the last node added", pass, ev)
			}
		}
		var list v1alpha1.RoutingNodeList
		if err := env.Client.List(ctx, &list); err != nil {
			t.Fatal(err)
		}
		if len(list.Items) != want || created != want-pass*3 || !more || len(nodes) != 7 {
			t.Fatalf("pass %d: %d RoutingNodes (created %d, more %v, %d nodes planned), want %d of 7 nodes with more to come", pass, len(list.Items), created, more, len(nodes), want)
		}
		d := rollout.Plan(rollout.Input{Spec: tunnelSpec, Nodes: nodes, Now: time.Now(), Generation: 1})
		if len(d.Updates) != 0 || d.Preflight.Reason != rollout.ReasonWaitingForAgents {
			t.Errorf("pass %d: planned %d updates, preflight %+v, want none while nodes wait for their RoutingNodes", pass, len(d.Updates), d.Preflight)
		}
	}
	// With the direct client every RoutingNode it made is seen at once.
	if _, created, more, err := r.observeNodes(ctx, nil, 3); err != nil || created != 0 || more {
		t.Errorf("after every RoutingNode exists: created %d, more %v, %v; want nothing left", created, more, err)
	}
}
