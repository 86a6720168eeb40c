// Package controller is the node agent's controller-runtime reconciler. It
// is node-scoped: it reconciles the RoutingNode named after its node, reads
// every Node for its own and its peers' facts (InternalIP, podCIDR), hands
// them to the agent (agent/node) and writes the RoutingNode's status
// subresource, only when it changed. No leader election: one agent per node.
//
// What it caches grows with the cluster only by a peer's facts
// (CacheOptions): Nodes are stripped to name, InternalIP and podCIDR as they
// are decoded, and the only RoutingNode watched is the node's own. A peer's
// VTEP MAC needs no object at all: every agent derives its tunnel device's
// MAC from its InternalIP (datapath.VTEPMAC), so peers derive it the same way.
//
// Triggers: the own RoutingNode (spec changes), Node changes that matter
// (addresses, podCIDR, creation, deletion), kernel events (a deleted
// rm_vxlan or pod route is repaired at once, via a source.Channel fed by
// netlink link and route subscriptions) and the periodic resync the agent
// asks for (RequeueAfter).
package controller

import (
	"context"
	"net/netip"
	"slices"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	"github.com/routemode/routemode/agent/datapath"
	"github.com/routemode/routemode/agent/node"
	"github.com/routemode/routemode/api/v1alpha1"
	"github.com/routemode/routemode/internal/nodefacts"
)

// ControllerName names the agent's controller.
const ControllerName = "routemode-agent"

// Agent is what the reconciler drives: *node.Agent, or a stand-in in tests.
type Agent interface {
	Reconcile(ctx context.Context, req node.Request) node.Result
}

// Reconciler reconciles the RoutingNode of one node.
type Reconciler struct {
	Client   client.Client
	NodeName string
	Agent    Agent
	// Kernel, when set, carries kernel events (link changes) that should
	// trigger a reconcile.
	Kernel <-chan event.GenericEvent

	// applied is the RoutingNode generation the kernel last matched, for
	// Ready.
	applied atomic.Int64
	// adopted is set once the first reconcile since the agent started has
	// applied the node's spec.
	adopted atomic.Bool
}

// +kubebuilder:rbac:groups=routemode.io,resources=routingnodes,verbs=get;list;watch
// +kubebuilder:rbac:groups=routemode.io,resources=routingnodes/status,verbs=get;update;patch
// +kubebuilder:rbac:groups="",resources=nodes,verbs=get;list;watch

// Reconcile applies the own RoutingNode's spec and writes its status.
func (r *Reconciler) Reconcile(ctx context.Context, _ reconcile.Request) (ctrl.Result, error) {
	log := ctrl.LoggerFrom(ctx)
	var rn v1alpha1.RoutingNode
	if err := r.Client.Get(ctx, types.NamespacedName{Name: r.NodeName}, &rn); err != nil {
		if apierrors.IsNotFound(err) {
			return ctrl.Result{}, nil // the operator has not created it yet
		}
		return ctrl.Result{}, err
	}
	var nodes corev1.NodeList
	if err := r.Client.List(ctx, &nodes); err != nil {
		return ctrl.Result{}, err
	}
	req := BuildRequest(r.NodeName, &rn, nodes.Items)
	start := time.Now()
	res := r.Agent.Reconcile(ctx, req)
	record(time.Since(start), res)
	r.recordApplied(rn.Generation, res.Status)
	if r.adopted.CompareAndSwap(false, true) {
		// After a crash or an upgrade this says in one line whether the
		// kernel the agent found needed anything: nothing when its last
		// run had applied this generation.
		log.Info("Adopted the node's kernel state", "generation", rn.Generation, "step", rn.Spec.Step, "changes", res.Changes)
	}
	if !StatusEqual(rn.Status, res.Status) {
		// A merge patch holds only what differs from rn, the cached
		// object, which may not have the agent's own last write yet:
		// fields that write changed and this one changes back (a peer
		// counted unreachable, then gone) would be left as that write
		// made them, and the rollout's gate would wait on them until the
		// next resync. The lock makes such a patch fail, and the retry
		// reads the cache again.
		patch := client.MergeFromWithOptions(rn.DeepCopy(), client.MergeFromWithOptimisticLock{})
		rn.Status = res.Status
		if err := r.Client.Status().Patch(ctx, &rn, patch); err != nil {
			return ctrl.Result{}, err
		}
		log.V(1).Info("Updated RoutingNode status", "routingNode", rn.Name, "observedGeneration", rn.Status.ObservedGeneration)
	}
	return ctrl.Result{RequeueAfter: res.RequeueAfter}, nil
}

// BuildRequest turns the API objects into the agent's input. Peers are the
// other nodes with an IPv4 InternalIP and podCIDR; their VTEP MAC is
// derived from the InternalIP, as each agent derives its own.
func BuildRequest(self string, rn *v1alpha1.RoutingNode, nodes []corev1.Node) node.Request {
	req := node.Request{Generation: rn.Generation, Datapath: rn.Spec.Datapath, Previous: rn.Status,
		Self: datapath.Node{Name: self}}
	for _, n := range nodes {
		ip, cidr := InternalIP(n), PodCIDR(n)
		if n.Name == self {
			req.Self = datapath.Node{Name: self, IP: ip, PodCIDR: cidr}
			continue
		}
		if !ip.IsValid() || !cidr.IsValid() {
			continue
		}
		req.Peers = append(req.Peers, node.Peer{Name: n.Name, IP: ip, PodCIDR: cidr})
	}
	slices.SortFunc(req.Peers, func(a, b node.Peer) int {
		if a.Name < b.Name {
			return -1
		}
		if a.Name > b.Name {
			return 1
		}
		return 0
	})
	return req
}

// InternalIP is the node's first IPv4 InternalIP.
func InternalIP(n corev1.Node) netip.Addr {
	for _, a := range n.Status.Addresses {
		if a.Type != corev1.NodeInternalIP {
			continue
		}
		if ip, err := netip.ParseAddr(a.Address); err == nil && ip.Is4() {
			return ip
		}
	}
	return netip.Addr{}
}

// PodCIDR is the node's IPv4 podCIDR.
func PodCIDR(n corev1.Node) netip.Prefix {
	for _, s := range append([]string{n.Spec.PodCIDR}, n.Spec.PodCIDRs...) {
		if p, err := netip.ParsePrefix(s); err == nil && p.Addr().Is4() {
			return p.Masked()
		}
	}
	return netip.Prefix{}
}

// StatusEqual compares two statuses semantically. The status holds no
// round-trip times (the per-peer table with RTTs stays on the node), so a
// resync whose probes jitter compares equal and writes nothing.
func StatusEqual(a, b v1alpha1.RoutingNodeStatus) bool {
	return equality.Semantic.DeepEqual(a, b)
}

// CacheOptions is the agent manager's cache: Nodes stripped to their facts
// and only the node's own RoutingNode, so the agent holds a few hundred
// bytes per peer and is sent no other node's status.
func CacheOptions(nodeName string) cache.Options {
	return cache.Options{ByObject: map[client.Object]cache.ByObject{
		&corev1.Node{}:          {Transform: nodefacts.Transform},
		&v1alpha1.RoutingNode{}: {Field: fields.OneTermEqualSelector("metadata.name", nodeName)},
	}}
}

// SetupWithManager registers the reconciler; the manager's cache must come
// from CacheOptions.
func (r *Reconciler) SetupWithManager(mgr ctrl.Manager, opts controller.Options) error {
	own := func(context.Context, client.Object) []reconcile.Request {
		return []reconcile.Request{{NamespacedName: types.NamespacedName{Name: r.NodeName}}}
	}
	b := ctrl.NewControllerManagedBy(mgr).
		Named(ControllerName).
		WithOptions(opts).
		For(&v1alpha1.RoutingNode{}, builder.WithPredicates(predicate.NewPredicateFuncs(func(o client.Object) bool {
			return o.GetName() == r.NodeName
		}), predicate.GenerationChangedPredicate{})).
		Watches(&corev1.Node{}, handler.EnqueueRequestsFromMapFunc(own), builder.WithPredicates(nodeFactsChanged()))
	if r.Kernel != nil {
		b = b.WatchesRawSource(source.Channel(r.Kernel, handler.EnqueueRequestsFromMapFunc(own)))
	}
	return b.Complete(r)
}

// nodeFactsChanged passes Node events that change what the agent uses.
func nodeFactsChanged() predicate.Predicate {
	return predicate.Funcs{
		UpdateFunc: func(e event.UpdateEvent) bool {
			o, ok1 := e.ObjectOld.(*corev1.Node)
			n, ok2 := e.ObjectNew.(*corev1.Node)
			return !ok1 || !ok2 || InternalIP(*o) != InternalIP(*n) || PodCIDR(*o) != PodCIDR(*n)
		},
	}
}
