package rollout

import (
	"fmt"
	"time"

	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/routemode/routemode/api/v1alpha1"
	"github.com/routemode/routemode/internal/bounded"
)

// DefaultHealthCheckTimeout applies when the spec leaves it unset.
const DefaultHealthCheckTimeout = 2 * time.Minute

// Input is everything a decision depends on.
type Input struct {
	Spec  v1alpha1.RoutingModeSpec
	Nodes []Node
	Now   time.Time
	// Stalled is a stall already recorded for the current generation: the
	// rollout stays halted until the spec changes.
	Stalled *Stall
	// Started is when the rollout of the current generation began.
	Started time.Time
	// Generation is the RoutingMode's generation.
	Generation int64
}

// Update is a new datapath for one node.
type Update struct {
	Node     string
	Datapath v1alpha1.NodeDatapath
	Step     v1alpha1.RolloutStep
	// Previous is recorded so a failed Switch can be rolled back.
	Previous *v1alpha1.NodeDatapath
	// Reason says why, for a rollback.
	Reason string
}

// Stall is why a rollout halted.
type Stall struct {
	Reason  string
	Message string
}

// Stall reasons besides the preflight ones.
const (
	ReasonNodeFailed   = "NodeFailed"
	ReasonAgentTimeout = "AgentTimeout"
)

// Decision is what to write next and how to report it.
type Decision struct {
	Phase     v1alpha1.RolloutPhase
	Updates   []Update
	Stall     *Stall
	Preflight PreflightResult
	// Waiting says what the rollout waits for.
	Waiting string
	Counts  v1alpha1.NodeCounts
	// Target is the datapath every node runs at the end.
	Target v1alpha1.NodeDatapath
	// RequeueAfter is when a timeout may fire without any event.
	RequeueAfter time.Duration
}

// Plan decides the next step of the rollout.
func Plan(in Input) (d Decision) {
	target := Steady(in.Spec)
	d.Target = target
	defer func() { d.Counts = Count(in.Nodes, target, d.Updates) }()

	if in.Stalled == nil {
		in.Stalled = rolledBack(in)
	}
	if in.Stalled != nil {
		d.Phase, d.Stall = v1alpha1.PhaseStalled, in.Stalled
		return d
	}
	if atTarget(in.Nodes, target) {
		return complete(d, in.Nodes, in)
	}

	d.Preflight = Preflight(target, in.Nodes)
	switch {
	case d.Preflight.Failed:
		d.Phase, d.Stall = v1alpha1.PhaseStalled, &Stall{Reason: d.Preflight.Reason, Message: d.Preflight.Message}
		return d
	case d.Preflight.Waiting:
		return waitForAgents(d, in)
	}

	current := make([]*v1alpha1.NodeDatapath, 0, len(in.Nodes))
	routing := false
	for _, n := range in.Nodes {
		current = append(current, n.Datapath)
		routing = routing || routingChanges(n.Datapath, target)
	}
	r := unionReceive(target, current)
	d.Updates = joinNewNodes(in.Nodes, target, r, routing)

	if !routing {
		return switchBatches(d, in, target, func(n Node) bool { return Equal(n.Datapath, &target) }, func(n Node) v1alpha1.NodeDatapath { return target })
	}

	// Prepare: every node receives both ways before any node sends
	// differently. Once every node sends the new way, nobody sends the old
	// way any more: a node that already dropped the old mode's state (a
	// finalize whose writes were cut short) must not be prepared again.
	var prepare []Update
	everyoneSwitched := allSendLike(in.Nodes, target)
	for _, n := range in.Nodes {
		if n.Datapath != nil && !receiveReady(n.Datapath, r) && !everyoneSwitched {
			prepare = append(prepare, Update{Node: n.Name, Datapath: prepared(*n.Datapath, r, target), Step: v1alpha1.StepPrepare})
		}
	}
	if len(prepare) > 0 {
		d.Phase, d.Updates = v1alpha1.PhasePreparing, append(d.Updates, prepare...)
		d.Waiting = fmt.Sprintf("preparing %d nodes to receive both ways", len(prepare))
		return d
	}
	if g := gate(in, func(n Node) bool { return n.Step == v1alpha1.StepPrepare }); g.blocked {
		return g.apply(d, v1alpha1.PhasePreparing, in.Spec)
	}

	sw := switched(r, target)
	d = switchBatches(d, in, target, func(n Node) bool { return sendsLike(n.Datapath, target) }, func(Node) v1alpha1.NodeDatapath { return sw })
	if d.Phase != v1alpha1.PhaseComplete {
		return d
	}

	// Finalize: nobody sends the old way any more, so its state can go.
	d.Phase, d.Waiting = v1alpha1.PhaseFinalizing, "removing what the old mode left on every node"
	for _, n := range in.Nodes {
		if n.Datapath != nil && !Equal(n.Datapath, &target) {
			d.Updates = append(d.Updates, Update{Node: n.Name, Datapath: target, Step: v1alpha1.StepFinalize})
		}
	}
	return d
}

// allSendLike reports whether every node with a datapath sends the way
// target does.
func allSendLike(nodes []Node, target v1alpha1.NodeDatapath) bool {
	for _, n := range nodes {
		if n.Datapath != nil && !sendsLike(n.Datapath, target) {
			return false
		}
	}
	return true
}

// rolledBack is the halt a rollback in this generation implies. It is read
// from the RoutingNodes themselves, so the halt holds even before the
// RoutingMode's Stalled condition is seen again.
func rolledBack(in Input) *Stall {
	for _, n := range in.Nodes {
		if n.Step == v1alpha1.StepRollback && n.TargetGeneration == in.Generation {
			return &Stall{Reason: ReasonNodeFailed, Message: haltMessage(n.RollbackReason)}
		}
	}
	return nil
}

func haltMessage(why string) string {
	return fmt.Sprintf("%s; the rollout halted: fix the node, then set spec.rollout.paused to true and back to false (or apply a new spec) to retry", why)
}

// atTarget reports whether every node was asked for the target datapath.
func atTarget(nodes []Node, target v1alpha1.NodeDatapath) bool {
	for _, n := range nodes {
		if !Equal(n.Datapath, &target) {
			return false
		}
	}
	return true
}

// complete reports a finished rollout, or the last step still settling.
func complete(d Decision, nodes []Node, in Input) Decision {
	if g := gate(in, func(Node) bool { return true }); g.blocked {
		phase := v1alpha1.PhaseSwitching
		for _, n := range nodes {
			if n.Step == v1alpha1.StepFinalize {
				phase = v1alpha1.PhaseFinalizing
			}
		}
		return g.apply(d, phase, in.Spec)
	}
	d.Phase = v1alpha1.PhaseComplete
	return d
}

// waitForAgents waits for the agents to report, for healthCheckTimeout
// from the rollout's start or from the last node joining, whichever is
// later: an agent cannot report before its RoutingNode exists, and at
// 5,000 nodes the operator creates them over a minute or more. A node
// still without its facts by then is NodeMissingFacts, any other silence
// AgentTimeout.
func waitForAgents(d Decision, in Input) Decision {
	d.Phase, d.Waiting = v1alpha1.PhasePreflight, d.Preflight.Message
	timeout := healthCheckTimeout(in.Spec)
	since := in.Started
	for _, n := range in.Nodes {
		switch {
		case !n.HasRoutingNode:
			since = in.Now
		case n.Created.After(since):
			since = n.Created
		}
	}
	if !in.Started.IsZero() && in.Now.Sub(since) > timeout {
		stall := &Stall{Reason: ReasonAgentTimeout,
			Message: fmt.Sprintf("%s for more than %s: check that the routemode-agent DaemonSet runs on every node", d.Preflight.Message, timeout)}
		if d.Preflight.Reason == ReasonNodeJoining {
			stall = &Stall{Reason: ReasonNodeMissingFacts, Message: fmt.Sprintf("%s; still missing after %s", d.Preflight.Message, timeout)}
		}
		d.Phase, d.Stall = v1alpha1.PhaseStalled, stall
		return d
	}
	d.RequeueAfter = timeout - in.Now.Sub(since)
	return d
}

// joinNewNodes gives nodes without a datapath one: the target when nothing
// is changing; a switched state once every other node applied receive-both;
// otherwise receive-both, sending like the nodes that have not switched yet,
// so the new node takes part in the rollout like the others.
func joinNewNodes(nodes []Node, target v1alpha1.NodeDatapath, r receive, routing bool) []Update {
	var updates []Update
	var model *v1alpha1.NodeDatapath
	allReady := true
	for _, n := range nodes {
		if n.Datapath == nil {
			continue
		}
		if h, _ := nodeHealth(n); !receiveReady(n.Datapath, r) || h != healthy {
			allReady = false
		}
		if model == nil && !sendsLike(n.Datapath, target) {
			model = n.Datapath
		}
	}
	for _, n := range nodes {
		if n.Datapath != nil {
			continue
		}
		u := Update{Node: n.Name, Datapath: target, Step: v1alpha1.StepSteady}
		switch {
		// With no node left sending the old way (model == nil: a finalize
		// in progress, some nodes already receiving only the new way), the
		// new node sends the new way too, while still receiving both.
		case routing && (allReady || model == nil):
			u.Datapath, u.Step = switched(r, target), v1alpha1.StepSwitch
		case routing:
			u.Datapath, u.Step = prepared(*model, r, target), v1alpha1.StepPrepare
		}
		updates = append(updates, u)
	}
	return updates
}

// switchBatches moves the nodes that are not done to next(n), at most
// maxUnavailable unhealthy nodes at a time. It reports PhaseComplete when
// every node is done and healthy.
func switchBatches(d Decision, in Input, target v1alpha1.NodeDatapath, done func(Node) bool, next func(Node) v1alpha1.NodeDatapath) Decision {
	g := gate(in, func(n Node) bool { return n.Step == v1alpha1.StepSwitch || n.Step == v1alpha1.StepSteady })
	if g.failed != nil {
		return g.apply(d, v1alpha1.PhaseSwitching, in.Spec)
	}
	var todo []Node
	for _, n := range in.Nodes {
		if n.Datapath != nil && !done(n) {
			todo = append(todo, n)
		}
	}
	if len(todo) == 0 && len(d.Updates) == 0 {
		if g.blocked {
			return g.apply(d, v1alpha1.PhaseSwitching, in.Spec)
		}
		d.Phase = v1alpha1.PhaseComplete
		return d
	}
	d.Phase = v1alpha1.PhaseSwitching
	slots := maxUnavailable(in.Spec, len(in.Nodes)) - g.unavailable - len(d.Updates)
	switch {
	case len(todo) == 0:
	case in.Spec.Rollout.Paused:
		if g.unavailable == 0 {
			d.Phase = v1alpha1.PhasePaused
		}
		d.Waiting = fmt.Sprintf("paused with %d of %d nodes still to switch; set spec.rollout.paused to false to go on", len(todo), len(in.Nodes))
		return d
	case slots <= 0:
		d.Waiting, d.RequeueAfter = g.waiting, g.requeue
		return d
	}
	for _, n := range todo[:min(max(slots, 0), len(todo))] {
		prev := *n.Datapath
		d.Updates = append(d.Updates, Update{Node: n.Name, Datapath: next(n), Step: v1alpha1.StepSwitch, Previous: &prev})
	}
	names := make([]string, 0, len(d.Updates))
	for _, u := range d.Updates {
		names = append(names, u.Node)
	}
	d.Waiting = fmt.Sprintf("switching %s (%d of %d nodes left)", bounded.Names(names, bounded.DefaultNames), len(todo), len(in.Nodes))
	return d
}

// gateResult is the health of the nodes a step waits on.
type gateResult struct {
	blocked     bool
	unavailable int
	waiting     string
	requeue     time.Duration
	failed      *Node
	why         string
}

// gate checks the nodes selected by inStep: a node that failed, or that was
// not healthy within healthCheckTimeout of its step starting, fails the step.
func gate(in Input, inStep func(Node) bool) gateResult {
	var g gateResult
	timeout := healthCheckTimeout(in.Spec)
	for i, n := range in.Nodes {
		if !n.HasRoutingNode || n.Datapath == nil || !inStep(n) {
			continue
		}
		h, msg := nodeHealth(n)
		if h == healthy {
			continue
		}
		elapsed := in.Now.Sub(n.StepStarted)
		if h == healthFailed || (!n.StepStarted.IsZero() && elapsed > timeout) {
			if h != healthFailed {
				msg = fmt.Sprintf("%s was not healthy within %s: %s", n.Name, timeout, msg)
			}
			g.failed, g.why, g.blocked = &in.Nodes[i], msg, true
			return g
		}
		g.blocked = true
		g.unavailable++
		if g.waiting == "" {
			g.waiting = msg
		}
		if left := timeout - elapsed; g.requeue == 0 || left < g.requeue {
			g.requeue = left
		}
	}
	return g
}

// apply reports the gate on d: a failure stalls the rollout, after rolling
// the failed node back to what it did before if its switch failed.
func (g gateResult) apply(d Decision, phase v1alpha1.RolloutPhase, spec v1alpha1.RoutingModeSpec) Decision {
	d.Phase, d.Waiting, d.RequeueAfter = phase, g.waiting, g.requeue
	if g.failed == nil {
		return d
	}
	n := g.failed
	msg := g.why
	if n.Step == v1alpha1.StepSwitch && n.Previous != nil && autoRollback(spec) {
		msg += "; rolled back to how it sent before"
		d.Updates = append(d.Updates, Update{Node: n.Name, Datapath: *n.Previous, Step: v1alpha1.StepRollback, Reason: msg})
	}
	d.Phase = v1alpha1.PhaseStalled
	d.Stall = &Stall{Reason: ReasonNodeFailed, Message: haltMessage(msg)}
	return d
}

func healthCheckTimeout(spec v1alpha1.RoutingModeSpec) time.Duration {
	if t := spec.Rollout.HealthCheckTimeout; t != nil && t.Duration > 0 {
		return t.Duration
	}
	return DefaultHealthCheckTimeout
}

func maxUnavailable(spec v1alpha1.RoutingModeSpec, total int) int {
	mu := intstr.FromInt32(1)
	if spec.Rollout.MaxUnavailable != nil {
		mu = *spec.Rollout.MaxUnavailable
	}
	n, err := intstr.GetScaledValueFromIntOrPercent(&mu, total, false)
	if err != nil || n < 1 {
		return 1
	}
	return n
}

// Count reports the nodes' progress after the updates are written.
func Count(nodes []Node, target v1alpha1.NodeDatapath, updates []Update) v1alpha1.NodeCounts {
	next := map[string]Update{}
	for _, u := range updates {
		next[u.Node] = u
	}
	c := v1alpha1.NodeCounts{Total: int32(len(nodes))}
	for _, n := range nodes {
		dp, step := n.Datapath, n.Step
		if u, ok := next[n.Name]; ok {
			dp, step = &u.Datapath, u.Step
		}
		if sendsLike(dp, target) {
			c.Updated++
		}
		h, _ := nodeHealth(n)
		_, changed := next[n.Name]
		switch {
		case step == v1alpha1.StepRollback || (h == healthFailed && !changed):
			c.Failed++
		case h == healthy && !changed:
			c.Healthy++
		}
	}
	return c
}
