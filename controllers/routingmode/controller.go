// Package routingmode reconciles the cluster's RoutingMode: it keeps one
// RoutingNode per Node, asks rollout.Plan what each node's datapath must be
// next, writes that to the RoutingNodes and reports the rollout in the
// RoutingMode's status.
package routingmode

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	kerrors "k8s.io/apimachinery/pkg/util/errors"
	"k8s.io/client-go/tools/events"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/routemode/routemode/api/v1alpha1"
	"github.com/routemode/routemode/controllers/rollout"
	"github.com/routemode/routemode/internal/bounded"
	"github.com/routemode/routemode/internal/nodefacts"
)

// ControllerName names the controller in logs, events and metrics.
const ControllerName = "routingmode"

// Annotations the operator keeps on the objects it owns.
const (
	// AnnotationStepStarted is when a RoutingNode's current step was written,
	// the start of its health-check timeout.
	AnnotationStepStarted = "routemode.io/step-started"
	// AnnotationPreviousDatapath is the datapath a Switch replaced, the target
	// of a rollback.
	AnnotationPreviousDatapath = "routemode.io/previous-datapath"
	// AnnotationRollbackReason says why a node was rolled back.
	AnnotationRollbackReason = "routemode.io/rollback-reason"
)

// DefaultMaxWritesPerReconcile is 5 s of writes at the operator's default
// client rate limit of 100 per second, well inside the reconcile timeout.
const DefaultMaxWritesPerReconcile = 500

func (r *Reconciler) writeLimit() int {
	if r.MaxWritesPerReconcile > 0 {
		return r.MaxWritesPerReconcile
	}
	return DefaultMaxWritesPerReconcile
}

// ReasonStatusRefused is Ready's reason when the API server refused the
// status the operator computed.
const ReasonStatusRefused = "StatusRefused"

// Reconciler drives the RoutingMode rollout.
type Reconciler struct {
	client.Client
	Recorder events.EventRecorder
	// Now is the clock; tests move it to fire timeouts.
	Now func() time.Time

	// MaxWritesPerReconcile caps the RoutingNodes one reconcile writes;
	// 0 means DefaultMaxWritesPerReconcile.
	MaxWritesPerReconcile int

	// written is the generation each RoutingNode had after this operator
	// last wrote it. A decision made from a cache that has not caught up
	// with the operator's own writes could switch a node twice or too many
	// nodes at once, so reconciles wait for the cache first.
	written map[string]writtenAt
	// creating is when this operator created each RoutingNode its cache
	// has not shown yet, so a reconcile does not create it again.
	creating map[string]time.Time
}

// writtenAt identifies one write of one RoutingNode object: a RoutingNode
// deleted and made again starts its generations afresh.
type writtenAt struct {
	uid        types.UID
	generation int64
}

// +kubebuilder:rbac:groups=routemode.io,resources=routingmodes,verbs=get;list;watch;patch
// +kubebuilder:rbac:groups=routemode.io,resources=routingmodes/status,verbs=get;update;patch
// +kubebuilder:rbac:groups=routemode.io,resources=routingnodes,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups="",resources=nodes,verbs=get;list;watch
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// staleRetry is how soon a reconcile that found the cache behind the
// operator's own writes runs again.
const staleRetry = 50 * time.Millisecond

// Reconcile runs one step of the rollout.
func (r *Reconciler) Reconcile(ctx context.Context, _ reconcile.Request) (res ctrl.Result, reterr error) {
	rm := &v1alpha1.RoutingMode{}
	if err := r.Get(ctx, client.ObjectKey{Name: v1alpha1.RoutingModeName}, rm); err != nil {
		if !apierrors.IsNotFound(err) {
			return ctrl.Result{}, err
		}
		// Without a RoutingMode the RoutingNodes still exist, with no
		// datapath: agents report their kernels and wire pods, and the
		// first RoutingMode's preflight has what it needs.
		rm = nil
	}
	now := r.Now()
	limit := r.writeLimit()
	nodes, created, uncreated, err := r.observeNodes(ctx, rm, limit)
	if err != nil {
		return ctrl.Result{}, err
	}
	// The rest are created, or seen in the cache, next time.
	var more ctrl.Result
	if uncreated {
		more.RequeueAfter = 50 * time.Millisecond
	}
	if rm == nil {
		return more, nil
	}

	if stale := r.staleNodes(nodes); stale != "" {
		log.FromContext(ctx).V(1).Info("Waited for the cache to see the operator's writes", "routingNode", stale)
		return ctrl.Result{RequeueAfter: staleRetry}, nil
	}
	in := rollout.Input{Spec: rm.Spec, Nodes: nodes, Now: now, Stalled: recordedStall(rm), Generation: rm.Generation}
	if rm.Status.RolloutStartTime != nil && rm.Status.ObservedGeneration == rm.Generation {
		in.Started = rm.Status.RolloutStartTime.Time
	} else {
		in.Started = now
	}
	d := rollout.Plan(in)
	if limit -= created; len(d.Updates) > limit {
		// At 5,000 nodes a phase decides 5,000 writes at once, longer than
		// a reconcile may take: the reconcile would be cut off and the
		// status left unwritten. Writing a chunk and planning again keeps
		// the status current; every chunk of a decision is itself safe
		// (it switches fewer nodes than the batch allows).
		d.Updates = d.Updates[:limit]
		d.Counts = rollout.Count(nodes, d.Target, d.Updates)
		d.RequeueAfter = time.Millisecond
	}
	if uncreated && (d.RequeueAfter == 0 || more.RequeueAfter < d.RequeueAfter) {
		d.RequeueAfter = more.RequeueAfter
	}

	original := rm.DeepCopy()
	defer func() {
		computeStatus(rm, d, nodes, now)
		err := r.patchStatus(ctx, original, rm)
		if apierrors.IsConflict(err) {
			// The cache had not yet seen this operator's own last status
			// write; the watch event that brings it also brings a
			// reconcile, and the requeue is the backstop.
			log.FromContext(ctx).V(1).Info("Status written from a stale read; writing it again from a fresh one")
			if res.RequeueAfter == 0 || res.RequeueAfter > staleRetry {
				res.RequeueAfter = staleRetry
			}
			err = nil
		}
		reterr = kerrors.NewAggregate([]error{reterr, err})
		observeMetrics(rm, original, now)
	}()
	if err := r.writeUpdates(ctx, rm, d.Updates, now); err != nil {
		return ctrl.Result{}, err
	}
	if d.Stall != nil && in.Stalled == nil {
		r.Recorder.Eventf(rm, nil, corev1.EventTypeWarning, d.Stall.Reason, "Halt", "%s", bounded.Message(d.Stall.Message))
	}
	if d.Phase == v1alpha1.PhaseComplete {
		rv, err := r.recordCompletedSpec(ctx, rm)
		if err != nil {
			return ctrl.Result{}, err
		}
		if rv != "" {
			// The status patch's lock is against the object as this
			// reconcile left it, its own annotation included.
			original.ResourceVersion = rv
		}
	}
	return ctrl.Result{RequeueAfter: d.RequeueAfter}, nil
}

// recordedStall is the halt recorded for this generation because a node
// failed: it holds until the spec changes, so a flapping node is not retried
// in a loop. Preflight failures are checked afresh, since they touched nothing.
func recordedStall(rm *v1alpha1.RoutingMode) *rollout.Stall {
	c := meta.FindStatusCondition(rm.Status.Conditions, v1alpha1.ConditionStalled)
	if c == nil || c.Status != metav1.ConditionTrue || c.ObservedGeneration != rm.Generation || c.Reason != rollout.ReasonNodeFailed {
		return nil
	}
	return &rollout.Stall{Reason: c.Reason, Message: c.Message}
}

// observeNodes reads every Node and its RoutingNode (rm may be nil), creating
// at most budget missing RoutingNodes (with no datapath, so their agents
// report what the preflight needs) and deleting those whose Node is gone.
// A node still without a RoutingNode is planned as one whose agent has not
// reported, which holds the rollout at the preflight; created says how many
// this call made and more whether any are still to be made or seen.
func (r *Reconciler) observeNodes(ctx context.Context, rm *v1alpha1.RoutingMode, budget int) (nodes []rollout.Node, created int, more bool, err error) {
	var nodeList corev1.NodeList
	if err := r.List(ctx, &nodeList); err != nil {
		return nil, 0, false, fmt.Errorf("listing nodes: %w", err)
	}
	var rnList v1alpha1.RoutingNodeList
	if err := r.List(ctx, &rnList); err != nil {
		return nil, 0, false, fmt.Errorf("listing routingnodes: %w", err)
	}
	rns := map[string]*v1alpha1.RoutingNode{}
	for i := range rnList.Items {
		rns[rnList.Items[i].Name] = &rnList.Items[i]
	}
	now := r.Now()
	for name, at := range r.creating {
		if _, seen := rns[name]; seen || now.Sub(at) > createLag {
			delete(r.creating, name)
		}
	}

	var errs []error
	var toCreate []*corev1.Node
	nodes = make([]rollout.Node, 0, len(nodeList.Items))
	for i := range nodeList.Items {
		node := &nodeList.Items[i]
		rn, ok := rns[node.Name]
		delete(rns, node.Name)
		if !ok {
			more = true
			if _, pending := r.creating[node.Name]; !pending && len(toCreate) < budget {
				toCreate = append(toCreate, node)
			}
		}
		// A node is planned without its RoutingNode until the cache has
		// it: planning as if the node did not exist could finalize while
		// it still needs the old mode.
		nodes = append(nodes, view(node, rn))
	}
	var joined []string
	var first *v1alpha1.RoutingNode
	errs = append(errs, inParallel(toCreate, func(node *corev1.Node) (*v1alpha1.RoutingNode, error) {
		rn, err := r.createRoutingNode(ctx, node)
		if apierrors.IsAlreadyExists(err) {
			return nil, nil
		}
		return rn, err
	}, func(node *corev1.Node, rn *v1alpha1.RoutingNode) {
		if rn == nil {
			return
		}
		if r.creating == nil {
			r.creating = map[string]time.Time{}
		}
		r.creating[node.Name] = now
		created++
		joined = append(joined, node.Name)
		if first == nil || rn.Name < first.Name {
			first = rn
		}
	}))
	if len(joined) > 0 {
		slices.Sort(joined)
		// One event per reconcile, naming a few: at 5,000 nodes an event
		// per node would be 5,000 more writes for the API server.
		var regarding runtime.Object = first
		if rm != nil {
			regarding = rm
		}
		r.Recorder.Eventf(regarding, nil, corev1.EventTypeNormal, "NodeAdded", "Create", "%s joined; waiting for their agents to report",
			bounded.Names(joined, bounded.DefaultNames))
	}
	for _, orphan := range rns {
		if err := r.Delete(ctx, orphan); client.IgnoreNotFound(err) != nil {
			errs = append(errs, fmt.Errorf("deleting routingnode %s of a deleted node: %w", orphan.Name, err))
		}
	}
	slices.SortFunc(nodes, func(a, b rollout.Node) int { return strings.Compare(a.Name, b.Name) })
	return nodes, created, more, errors.Join(errs...)
}

// createLag is how long a RoutingNode this operator created may stay out of
// its cache before it is created again (the first create's AlreadyExists then
// says the cache is behind; a RoutingNode deleted meanwhile is made anew).
const createLag = 10 * time.Second

func (r *Reconciler) createRoutingNode(ctx context.Context, node *corev1.Node) (*v1alpha1.RoutingNode, error) {
	rn := &v1alpha1.RoutingNode{
		ObjectMeta: metav1.ObjectMeta{Name: node.Name},
		Spec:       v1alpha1.RoutingNodeSpec{NodeName: node.Name, Step: v1alpha1.StepPending},
	}
	// The Node owns its RoutingNode so the garbage collector removes it with
	// the Node even while the operator is down.
	if err := controllerutil.SetOwnerReference(node, rn, r.Scheme()); err != nil {
		return nil, err
	}
	if err := r.Create(ctx, rn); err != nil {
		return nil, fmt.Errorf("creating routingnode %s: %w", node.Name, err)
	}
	return rn, nil
}

// staleNodes names a node whose cached RoutingNode is older than the
// operator's own last write of it.
func (r *Reconciler) staleNodes(nodes []rollout.Node) string {
	for _, n := range nodes {
		if w, ok := r.written[n.Name]; ok && w.uid == n.UID && n.Generation < w.generation {
			return n.Name
		}
	}
	return ""
}

// view is the planner's picture of one node; rn is nil while the node has
// no RoutingNode in the cache.
func view(node *corev1.Node, rn *v1alpha1.RoutingNode) rollout.Node {
	n := rollout.Node{Name: node.Name, PodCIDR: node.Spec.PodCIDR}
	for _, a := range node.Status.Addresses {
		if a.Type == corev1.NodeInternalIP {
			n.InternalIP = a.Address
			break
		}
	}
	if rn == nil {
		return n
	}
	n.HasRoutingNode, n.UID, n.Created, n.Generation = true, rn.UID, rn.CreationTimestamp.Time, rn.Generation
	n.Datapath, n.Step, n.TargetGeneration = rn.Spec.Datapath, rn.Spec.Step, rn.Spec.TargetGeneration
	n.RollbackReason, n.Status = rn.Annotations[AnnotationRollbackReason], rn.Status
	if t, err := time.Parse(time.RFC3339Nano, rn.Annotations[AnnotationStepStarted]); err == nil {
		n.StepStarted = t
	}
	if raw := rn.Annotations[AnnotationPreviousDatapath]; raw != "" {
		var prev v1alpha1.NodeDatapath
		if json.Unmarshal([]byte(raw), &prev) == nil {
			n.Previous = &prev
		}
	}
	return n
}

// writeWorkers is how many RoutingNode writes are in flight at once. One
// at a time, a write's round trip (tens to hundreds of milliseconds on a
// loaded API server) and not the client's rate limit would bound a
// rollout: 5,000 creates and 15,000 steps at 5,000 nodes.
const writeWorkers = 16

// inParallel runs write(item) for every item, writeWorkers at a time, and
// done(item, result) after each that succeeded, under one lock; the first
// failure stops the writes not yet started. The writes of one reconcile
// are independent.
func inParallel[T, R any](items []T, write func(T) (R, error), done func(T, R)) error {
	var (
		mu   sync.Mutex
		errs []error
		next int
	)
	take := func() (T, bool) {
		mu.Lock()
		defer mu.Unlock()
		if len(errs) > 0 || next == len(items) {
			var zero T
			return zero, false
		}
		next++
		return items[next-1], true
	}
	var wg sync.WaitGroup
	for range min(writeWorkers, len(items)) {
		wg.Go(func() {
			for it, ok := take(); ok; it, ok = take() {
				res, err := write(it)
				mu.Lock()
				if err != nil {
					errs = append(errs, err)
				} else {
					done(it, res)
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// writeUpdates writes the decided datapaths, one patch per RoutingNode; the
// first failure stops the writes not yet started.
func (r *Reconciler) writeUpdates(ctx context.Context, rm *v1alpha1.RoutingMode, updates []rollout.Update, now time.Time) error {
	if r.written == nil {
		r.written = map[string]writtenAt{}
	}
	// One event per step and datapath for the nodes this reconcile moved,
	// naming a few: an event per node would be 15,000 objects for a
	// 5,000-node rollout, each another write for the API server.
	type group struct {
		step v1alpha1.RolloutStep
		dp   string
	}
	moved := map[group][]string{}
	err := inParallel(updates, func(u rollout.Update) (*v1alpha1.RoutingNode, error) {
		return r.writeUpdate(ctx, rm, u, now)
	}, func(u rollout.Update, rn *v1alpha1.RoutingNode) {
		r.written[u.Node] = writtenAt{uid: rn.UID, generation: rn.Generation}
		if u.Step != v1alpha1.StepRollback {
			g := group{u.Step, describe(u.Datapath)}
			moved[g] = append(moved[g], u.Node)
		}
	})
	for g, names := range moved {
		slices.Sort(names)
		r.Recorder.Eventf(rm, nil, corev1.EventTypeNormal, "Node"+string(g.step), string(g.step), "%s %s (%s)",
			bounded.Names(names, bounded.DefaultNames), g.step, g.dp)
	}
	return err
}

// writeUpdate writes one node's decided datapath and step.
func (r *Reconciler) writeUpdate(ctx context.Context, rm *v1alpha1.RoutingMode, u rollout.Update, now time.Time) (*v1alpha1.RoutingNode, error) {
	rn := &v1alpha1.RoutingNode{}
	if err := r.Get(ctx, client.ObjectKey{Name: u.Node}, rn); err != nil {
		return nil, fmt.Errorf("reading routingnode %s: %w", u.Node, err)
	}
	base := rn.DeepCopy()
	dp := u.Datapath
	rn.Spec.Datapath, rn.Spec.Step, rn.Spec.TargetGeneration = &dp, u.Step, rm.Generation
	if rn.Annotations == nil {
		rn.Annotations = map[string]string{}
	}
	rn.Annotations[AnnotationStepStarted] = now.UTC().Format(time.RFC3339Nano)
	delete(rn.Annotations, AnnotationPreviousDatapath)
	delete(rn.Annotations, AnnotationRollbackReason)
	if u.Reason != "" {
		rn.Annotations[AnnotationRollbackReason] = u.Reason
	}
	if u.Previous != nil {
		raw, err := json.Marshal(u.Previous)
		if err != nil {
			return nil, err
		}
		rn.Annotations[AnnotationPreviousDatapath] = string(raw)
	}
	// Optimistic locking: a decision made on a stale RoutingNode must not land.
	if err := r.Patch(ctx, rn, client.MergeFromWithOptions(base, client.MergeFromWithOptimisticLock{})); err != nil {
		return nil, fmt.Errorf("writing step %s to routingnode %s: %w", u.Step, u.Node, err)
	}
	log.FromContext(ctx).Info("Wrote RoutingNode step", "routingNode", u.Node, "step", u.Step, "datapath", describe(dp))
	if u.Step == v1alpha1.StepRollback {
		// Rare, and each has its own reason: an event of its own.
		r.Recorder.Eventf(rm, rn, corev1.EventTypeWarning, "Node"+string(u.Step), string(u.Step), "Node %s: %s (%s): %s", u.Node, u.Step, describe(dp), u.Reason)
	}
	rolloutSteps.WithLabelValues(string(u.Step)).Inc()
	return rn, nil
}

// recordCompletedSpec remembers the spec that finished, for rollout undo,
// and returns the resourceVersion its write made ("" when it wrote
// nothing).
func (r *Reconciler) recordCompletedSpec(ctx context.Context, rm *v1alpha1.RoutingMode) (string, error) {
	raw, err := json.Marshal(rm.Spec)
	if err != nil {
		return "", err
	}
	if rm.Annotations[v1alpha1.AnnotationLastAppliedSpec] == string(raw) {
		return "", nil
	}
	// A copy: the patch's answer is the object as it is now, and a spec
	// edited meanwhile would give rm a newer generation, for which the
	// status this reconcile writes (its decision: Complete) would then
	// claim a rollout that has not begun.
	base, patched := rm.DeepCopy(), rm.DeepCopy()
	if patched.Annotations == nil {
		patched.Annotations = map[string]string{}
	}
	patched.Annotations[v1alpha1.AnnotationLastAppliedSpec] = string(raw)
	if err := r.Patch(ctx, patched, client.MergeFrom(base)); err != nil {
		return "", fmt.Errorf("recording the completed spec: %w", err)
	}
	return patched.ResourceVersion, nil
}

// patchStatus writes status only when it changed. A status the API server
// refuses (a message over its limits, say) must not leave the previous one
// standing as if it were current, so the refusal itself is written instead:
// Ready Unknown with the API server's reason, every other message cleared.
func (r *Reconciler) patchStatus(ctx context.Context, original, rm *v1alpha1.RoutingMode) error {
	if apiequality.Semantic.DeepEqual(original.Status, rm.Status) {
		return nil
	}
	// Locked: a merge patch from a cache that lacks the operator's own
	// last status write would leave that write's fields standing where
	// they equal the cache's, a status mixed from two reconciles. A
	// conflict requeues the reconcile on a fresh read.
	locked := client.MergeFromWithOptions(original, client.MergeFromWithOptimisticLock{})
	err := r.Status().Patch(ctx, rm, locked)
	if err == nil {
		return nil
	}
	if !apierrors.IsInvalid(err) && !apierrors.IsRequestEntityTooLargeError(err) {
		return fmt.Errorf("writing routingmode status: %w", err)
	}
	refused := rm.DeepCopy()
	for i := range refused.Status.Conditions {
		refused.Status.Conditions[i].Message = ""
	}
	meta.SetStatusCondition(&refused.Status.Conditions, metav1.Condition{
		Type: v1alpha1.ConditionReady, Status: metav1.ConditionUnknown, Reason: ReasonStatusRefused,
		ObservedGeneration: rm.Generation,
		Message:            bounded.Message("the API server refused the operator's status: " + err.Error()),
	})
	if ferr := r.Status().Patch(ctx, refused, locked); ferr != nil {
		return fmt.Errorf("writing routingmode status: %w; writing that it was refused: %w", err, ferr)
	}
	return fmt.Errorf("writing routingmode status: %w", err)
}

// CacheOptions is the operator manager's cache: Nodes stripped to the facts
// the planner reads (name, UID, InternalIP, podCIDR), so the operator does
// not hold every Node's images and conditions.
func CacheOptions() cache.Options {
	return cache.Options{ByObject: map[client.Object]cache.ByObject{
		&corev1.Node{}: {Transform: nodefacts.Transform},
	}}
}

// SetupWithManager registers the controller. Every event maps to the one
// RoutingMode: the rollout is decided over all nodes at once.
func (r *Reconciler) SetupWithManager(mgr ctrl.Manager, opts controller.Options) error {
	if r.Recorder == nil || r.Now == nil {
		return errors.New("routingmode reconciler needs a Recorder and a clock")
	}
	toDefault := handler.EnqueueRequestsFromMapFunc(func(context.Context, client.Object) []reconcile.Request {
		return []reconcile.Request{{NamespacedName: client.ObjectKey{Name: v1alpha1.RoutingModeName}}}
	})
	opts.MaxConcurrentReconciles = 1
	return ctrl.NewControllerManagedBy(mgr).
		Named(ControllerName).
		For(&v1alpha1.RoutingMode{}, builder.WithPredicates(predicate.GenerationChangedPredicate{})).
		Watches(&corev1.Node{}, toDefault).
		Watches(&v1alpha1.RoutingNode{}, toDefault).
		WithOptions(opts).
		Complete(r)
}
