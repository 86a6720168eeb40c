package rollout

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/routemode/routemode/api/v1alpha1"
)

var (
	tunnelSpec = v1alpha1.RoutingModeSpec{Tunnel: v1alpha1.TunnelVXLAN, TunnelPort: 8472, HostRouting: v1alpha1.HostRoutingLegacy}
	nativeSpec = v1alpha1.RoutingModeSpec{Tunnel: v1alpha1.TunnelDisabled, TunnelPort: 8472, NativeRoutingCIDR: "10.0.0.0/16",
		AutoDirectNodeRoutes: true, HostRouting: v1alpha1.HostRoutingBPF}
	allCaps = &v1alpha1.NodeCapabilities{Kernel: "6.18", VXLAN: true, BPFHostRouting: true, TCX: true}
)

// sim plays the agents: it applies each decision and reports every node
// healthy (or failed) at its new generation, checking at every step that no
// combination of applied and not-yet-applied nodes could lose a packet.
type sim struct {
	t       *testing.T
	spec    v1alpha1.RoutingModeSpec
	nodes   []Node
	now     time.Time
	failing map[string]bool
	phases  []v1alpha1.RolloutPhase
	stall   *Stall
	steps   map[string][]v1alpha1.RolloutStep
	// generation is the RoutingMode's; setSpec bumps it.
	generation int64
}

func (s *sim) setSpec(spec v1alpha1.RoutingModeSpec) {
	s.spec = spec
	s.generation++
	s.stall = nil
}

func newSim(t *testing.T, n int, from v1alpha1.RoutingModeSpec) *sim {
	s := &sim{t: t, spec: from, generation: 1, now: time.Unix(1_800_000_000, 0), failing: map[string]bool{}, steps: map[string][]v1alpha1.RolloutStep{}}
	for i := range n {
		s.addNode(i)
	}
	s.settle(20)
	if got := s.last(); got != v1alpha1.PhaseComplete {
		t.Fatalf("bootstrap ended in %s", got)
	}
	s.phases, s.steps = nil, map[string][]v1alpha1.RolloutStep{}
	return s
}

func (s *sim) addNode(i int) {
	name := fmt.Sprintf("node-%d", i+1)
	s.nodes = append(s.nodes, Node{
		Name: name, PodCIDR: fmt.Sprintf("10.0.%d.0/24", i), InternalIP: fmt.Sprintf("192.168.0.%d", 120+10*i),
		HasRoutingNode: true, Generation: 1, Step: v1alpha1.StepPending,
	})
	s.report()
}

func (s *sim) last() v1alpha1.RolloutPhase {
	if len(s.phases) == 0 {
		return ""
	}
	return s.phases[len(s.phases)-1]
}

// report has every agent apply its spec and report, as a real agent would
// once its probes ran.
func (s *sim) report() {
	for i := range s.nodes {
		n := &s.nodes[i]
		n.Status.Capabilities = allCaps
		n.Status.PeerSummary = &v1alpha1.PeerSummary{Total: int32(len(s.nodes) - 1)}
		if n.Datapath == nil {
			continue
		}
		n.Status.ObservedGeneration = n.Generation
		applied, healthy := metav1.ConditionTrue, metav1.ConditionTrue
		if s.failing[n.Name] && n.Step == v1alpha1.StepSwitch {
			healthy = metav1.ConditionFalse
		}
		meta.SetStatusCondition(&n.Status.Conditions, metav1.Condition{Type: v1alpha1.ConditionDatapathApplied, Status: applied, Reason: "Applied", ObservedGeneration: n.Generation})
		meta.SetStatusCondition(&n.Status.Conditions, metav1.Condition{Type: v1alpha1.ConditionPeersHealthy, Status: healthy, Reason: "Probed", Message: "probes lost", ObservedGeneration: n.Generation})
	}
}

func (s *sim) step() Decision {
	s.t.Helper()
	return s.apply(s.plan())
}

// plan decides from the nodes as they are.
func (s *sim) plan() Decision {
	d := Plan(Input{Spec: s.spec, Nodes: s.nodes, Now: s.now, Stalled: s.stall, Generation: s.generation})
	s.phases = append(s.phases, d.Phase)
	return d
}

// apply writes d's updates to the nodes, as the operator would.
func (s *sim) apply(d Decision) Decision {
	s.t.Helper()
	s.checkLossless(d.Updates)
	for _, u := range d.Updates {
		i := slices.IndexFunc(s.nodes, func(n Node) bool { return n.Name == u.Node })
		n := &s.nodes[i]
		dp := u.Datapath
		n.Datapath, n.Step, n.Previous, n.StepStarted = &dp, u.Step, u.Previous, s.now
		n.TargetGeneration, n.RollbackReason = s.generation, u.Reason
		n.Generation++
		s.steps[n.Name] = append(s.steps[n.Name], u.Step)
	}
	if d.Stall != nil && d.Stall.Reason == ReasonNodeFailed {
		s.stall = d.Stall
	}
	return d
}

// settle alternates decisions and agent reports until nothing changes.
func (s *sim) settle(max int) Decision {
	s.t.Helper()
	var d Decision
	for range max {
		d = s.step()
		s.now = s.now.Add(time.Second)
		if len(d.Updates) == 0 && (d.Phase == v1alpha1.PhaseComplete || d.Phase == v1alpha1.PhaseStalled || d.Phase == v1alpha1.PhasePaused) {
			return d
		}
		s.report()
	}
	s.t.Fatalf("no steady decision after %d steps; phases %v", max, s.phases)
	return d
}

// checkLossless checks every mix of old and new datapaths the agents may
// pass through while applying updates in any order.
func (s *sim) checkLossless(updates []Update) {
	s.t.Helper()
	if len(updates) > 10 {
		s.t.Fatalf("too many updates in one decision to check: %d", len(updates))
	}
	for mask := range 1 << len(updates) {
		world := map[string]*v1alpha1.NodeDatapath{}
		for _, n := range s.nodes {
			world[n.Name] = n.Datapath
		}
		for i, u := range updates {
			if mask&(1<<i) != 0 {
				world[u.Node] = &u.Datapath
			}
		}
		if err := lossless(world); err != nil {
			s.t.Fatalf("a node could lose packets while applying %v: %v", names(updates), err)
		}
	}
}

// lossless is the make-before-break invariant over one moment's datapaths.
func lossless(world map[string]*v1alpha1.NodeDatapath) error {
	for a, da := range world {
		if da == nil {
			continue
		}
		if da.SendMode == v1alpha1.SendTunnel && (da.Tunnel == v1alpha1.TunnelDisabled || da.RouteMTU != v1alpha1.RouteMTUTunnel) {
			return fmt.Errorf("%s sends through the tunnel with tunnel %s and route MTU %s", a, da.Tunnel, da.RouteMTU)
		}
		for b, db := range world {
			if a == b || db == nil {
				continue
			}
			if da.SendMode == v1alpha1.SendTunnel && (db.Tunnel != da.Tunnel || db.TunnelPort != da.TunnelPort) {
				return fmt.Errorf("%s encapsulates to %s, which has tunnel %s:%d", a, b, db.Tunnel, db.TunnelPort)
			}
			if da.SendMode != db.SendMode && (!da.LooseRPFilter || !db.LooseRPFilter) {
				return fmt.Errorf("%s and %s send different ways without loose rp_filter on both", a, b)
			}
		}
	}
	return nil
}

func names(us []Update) []string {
	var out []string
	for _, u := range us {
		out = append(out, u.Node+":"+string(u.Step))
	}
	return out
}

func compact(p []v1alpha1.RolloutPhase) string {
	return strings.Join(strings.Fields(fmt.Sprint(slices.Compact(slices.Clone(p)))), " ")
}

func TestPlanRollouts(t *testing.T) {
	bpfOnly := tunnelSpec
	bpfOnly.HostRouting = v1alpha1.HostRoutingBPF
	wide := nativeSpec
	wide.Rollout.MaxUnavailable = new(intstr.FromString("50%"))

	tests := map[string]struct {
		nodes      int
		from, to   v1alpha1.RoutingModeSpec
		wantPhases string
		wantSteps  []v1alpha1.RolloutStep
	}{
		"tunnel to native with bpf host routing": {
			nodes: 3, from: tunnelSpec, to: nativeSpec,
			wantPhases: "[Preparing Switching Finalizing Complete]",
			wantSteps:  []v1alpha1.RolloutStep{v1alpha1.StepPrepare, v1alpha1.StepSwitch, v1alpha1.StepFinalize},
		},
		"native to tunnel": {
			nodes: 3, from: nativeSpec, to: tunnelSpec,
			wantPhases: "[Preparing Switching Finalizing Complete]",
			wantSteps:  []v1alpha1.RolloutStep{v1alpha1.StepPrepare, v1alpha1.StepSwitch, v1alpha1.StepFinalize},
		},
		"host routing only is one step per node": {
			nodes: 3, from: tunnelSpec, to: bpfOnly,
			wantPhases: "[Switching Complete]",
			wantSteps:  []v1alpha1.RolloutStep{v1alpha1.StepSwitch},
		},
		"half the nodes at a time": {
			nodes: 6, from: tunnelSpec, to: wide,
			wantPhases: "[Preparing Switching Finalizing Complete]",
			wantSteps:  []v1alpha1.RolloutStep{v1alpha1.StepPrepare, v1alpha1.StepSwitch, v1alpha1.StepFinalize},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			s := newSim(t, tc.nodes, tc.from)
			s.setSpec(tc.to)
			d := s.settle(60)
			if got := compact(s.phases); got != tc.wantPhases {
				t.Errorf("phases = %s, want %s", got, tc.wantPhases)
			}
			if d.Counts != (v1alpha1.NodeCounts{Total: int32(tc.nodes), Updated: int32(tc.nodes), Healthy: int32(tc.nodes)}) {
				t.Errorf("counts at the end = %+v", d.Counts)
			}
			for _, n := range s.nodes {
				if !Equal(n.Datapath, new(Steady(tc.to))) {
					t.Errorf("%s ends with %+v", n.Name, *n.Datapath)
				}
				if !slices.Equal(s.steps[n.Name], tc.wantSteps) {
					t.Errorf("%s went through %v, want %v", n.Name, s.steps[n.Name], tc.wantSteps)
				}
			}
		})
	}
}

func TestPlanBatchesRespectMaxUnavailable(t *testing.T) {
	for _, tc := range []struct {
		mu   intstr.IntOrString
		want int
	}{{intstr.FromInt32(1), 1}, {intstr.FromInt32(2), 2}, {intstr.FromString("50%"), 3}, {intstr.FromString("10%"), 1}} {
		t.Run(tc.mu.String(), func(t *testing.T) {
			s := newSim(t, 6, tunnelSpec)
			s.setSpec(nativeSpec)
			s.spec.Rollout.MaxUnavailable = &tc.mu
			widest := 0
			for range 40 {
				d := s.step()
				switches := 0
				for _, u := range d.Updates {
					if u.Step == v1alpha1.StepSwitch {
						switches++
					}
				}
				widest = max(widest, switches)
				if d.Phase == v1alpha1.PhaseComplete {
					break
				}
				s.report()
			}
			if widest != tc.want {
				t.Errorf("largest batch = %d, want %d", widest, tc.want)
			}
		})
	}
}

func TestPlanWaitsForHealthBeforeNextBatch(t *testing.T) {
	s := newSim(t, 3, tunnelSpec)
	s.setSpec(nativeSpec)
	s.step() // prepare all
	if d := s.step(); len(d.Updates) != 0 || d.Phase != v1alpha1.PhasePreparing {
		t.Fatalf("switched before the prepare step was applied: %s %v", d.Phase, names(d.Updates))
	}
	s.report()
	d := s.step()
	if got := names(d.Updates); !slices.Equal(got, []string{"node-1:Switch"}) {
		t.Fatalf("first batch = %v", got)
	}
	if d := s.step(); len(d.Updates) != 0 || !strings.Contains(d.Waiting, "node-1") {
		t.Fatalf("went on before node-1 was healthy: %v, waiting %q", names(d.Updates), d.Waiting)
	}
}

func TestPlanRollsBackFailedNodeAndHalts(t *testing.T) {
	for _, autoRollback := range []bool{true, false} {
		t.Run(fmt.Sprint("autoRollback=", autoRollback), func(t *testing.T) {
			s := newSim(t, 3, tunnelSpec)
			s.setSpec(nativeSpec)
			s.spec.Rollout.AutoRollback = &autoRollback
			s.spec.Rollout.HealthCheckTimeout = &metav1.Duration{Duration: 10 * time.Second}
			s.failing["node-2"] = true
			d := s.settle(40)
			if d.Phase != v1alpha1.PhaseStalled || d.Stall == nil || !strings.Contains(d.Stall.Message, "node-2") {
				t.Fatalf("ended %s with stall %+v", d.Phase, d.Stall)
			}
			n2 := s.nodes[1]
			wantSteps := []v1alpha1.RolloutStep{v1alpha1.StepPrepare, v1alpha1.StepSwitch}
			if autoRollback {
				wantSteps = append(wantSteps, v1alpha1.StepRollback)
				if n2.Datapath.SendMode != v1alpha1.SendTunnel {
					t.Errorf("node-2 sends %s after its rollback", n2.Datapath.SendMode)
				}
			}
			if !slices.Equal(s.steps["node-2"], wantSteps) {
				t.Errorf("node-2 steps %v, want %v", s.steps["node-2"], wantSteps)
			}
			if got := s.steps["node-3"]; !slices.Equal(got, []v1alpha1.RolloutStep{v1alpha1.StepPrepare}) {
				t.Errorf("node-3 was touched after the failure: %v", got)
			}
			if autoRollback && d.Counts.Failed != 1 {
				t.Errorf("failed count = %d", d.Counts.Failed)
			}
			// A halted rollout stays halted until the spec changes.
			s.failing = map[string]bool{}
			s.report()
			if d := s.step(); d.Phase != v1alpha1.PhaseStalled || len(d.Updates) != 0 {
				t.Errorf("moved on while stalled: %s %v", d.Phase, names(d.Updates))
			}
			s.setSpec(s.spec) // what pausing and resuming does
			if d := s.settle(40); d.Phase != v1alpha1.PhaseComplete {
				t.Errorf("retry ended %s", d.Phase)
			}
		})
	}
}

func TestPlanPauseAndResume(t *testing.T) {
	s := newSim(t, 3, tunnelSpec)
	s.setSpec(nativeSpec)
	s.step()
	s.report()
	s.step() // node-1 switches
	s.report()
	s.spec.Rollout.Paused = true
	s.generation++
	d := s.settle(10)
	if d.Phase != v1alpha1.PhasePaused || d.Counts.Updated != 1 {
		t.Fatalf("paused at %s with %d updated", d.Phase, d.Counts.Updated)
	}
	s.spec.Rollout.Paused = false
	s.generation++
	if d := s.settle(30); d.Phase != v1alpha1.PhaseComplete {
		t.Fatalf("resume ended %s", d.Phase)
	}
}

func TestPlanNodeJoiningMidRollout(t *testing.T) {
	for joinAfter := range 10 {
		t.Run(fmt.Sprint("after ", joinAfter, " decisions"), func(t *testing.T) {
			s := newSim(t, 3, tunnelSpec)
			s.setSpec(nativeSpec)
			for range joinAfter {
				s.step()
				s.report()
			}
			s.addNode(3)
			if d := s.settle(40); d.Phase != v1alpha1.PhaseComplete || d.Counts.Total != 4 {
				t.Fatalf("ended %s with %+v", d.Phase, d.Counts)
			}
			if !Equal(s.nodes[3].Datapath, new(Steady(nativeSpec))) {
				t.Errorf("new node ends with %+v", s.nodes[3].Datapath)
			}
		})
	}
}

// A node that joins while a finalize is half done finds every node sending
// the new way, some of them no longer receiving the old: it must join
// sending the new way, not copy a node that sends the old way (there is
// none).
func TestJoinMidFinalize(t *testing.T) {
	target := Steady(nativeSpec)
	old := Steady(tunnelSpec)
	r := unionReceive(target, []*v1alpha1.NodeDatapath{&old, &target})
	sw := switched(r, target)
	nodes := []Node{
		{Name: "node-1", Datapath: &target, Step: v1alpha1.StepFinalize},
		{Name: "node-2", Datapath: &sw, Step: v1alpha1.StepSwitch},
		{Name: "node-3"},
	}
	got := joinNewNodes(nodes, target, r, true)
	if len(got) != 1 || got[0].Node != "node-3" || got[0].Step != v1alpha1.StepSwitch || !Equal(&got[0].Datapath, &sw) {
		t.Fatalf("node-3 joins with %+v, want %+v at Switch", got, sw)
	}
	world := map[string]*v1alpha1.NodeDatapath{"node-1": &target, "node-2": &sw, "node-3": &got[0].Datapath}
	if err := lossless(world); err != nil {
		t.Error(err)
	}
}

func TestPlanSpecChangedMidRollout(t *testing.T) {
	s := newSim(t, 4, tunnelSpec)
	s.setSpec(nativeSpec)
	for range 4 {
		s.step()
		s.report()
	}
	s.setSpec(tunnelSpec) // back before the first rollout finished
	if d := s.settle(60); d.Phase != v1alpha1.PhaseComplete {
		t.Fatalf("ended %s", d.Phase)
	}
	for _, n := range s.nodes {
		if !Equal(n.Datapath, new(Steady(tunnelSpec))) {
			t.Errorf("%s ends with %+v", n.Name, *n.Datapath)
		}
	}
}

func TestPlanTimeoutWithoutReport(t *testing.T) {
	s := newSim(t, 2, tunnelSpec)
	s.setSpec(nativeSpec)
	s.step()
	s.report()
	d := s.step()
	if len(d.Updates) != 1 {
		t.Fatalf("no switch started")
	}
	s.now = s.now.Add(DefaultHealthCheckTimeout - time.Second)
	if d := s.step(); d.Phase != v1alpha1.PhaseSwitching || d.RequeueAfter <= 0 || d.RequeueAfter > time.Second {
		t.Fatalf("before the timeout: %s, requeue %s", d.Phase, d.RequeueAfter)
	}
	s.now = s.now.Add(2 * time.Second)
	if d := s.step(); d.Phase != v1alpha1.PhaseStalled || !strings.Contains(d.Stall.Message, "not healthy within 2m0s") {
		t.Fatalf("after the timeout: %s %+v", d.Phase, d.Stall)
	}
}

// TestAgentTimeoutCountsFromTheLastJoin: the agents' time to report runs
// from the rollout's start or the last RoutingNode's creation, whichever
// is later, and not at all while a node has no RoutingNode yet; a node
// silent for longer than that stalls the rollout.
func TestAgentTimeoutCountsFromTheLastJoin(t *testing.T) {
	start := time.Unix(1_800_000_000, 0)
	nodes := []Node{
		{Name: "n0", PodCIDR: "10.0.0.0/24", InternalIP: "192.168.0.1", HasRoutingNode: true, Created: start.Add(-time.Hour),
			Status: v1alpha1.RoutingNodeStatus{Capabilities: allCaps, PeerSummary: &v1alpha1.PeerSummary{Total: 1}}},
		{Name: "n1", PodCIDR: "10.0.1.0/24", InternalIP: "192.168.0.2", HasRoutingNode: true, Created: start.Add(90 * time.Second)},
	}
	plan := func(now time.Time, nodes []Node) Decision {
		return Plan(Input{Spec: tunnelSpec, Nodes: nodes, Now: now, Started: start, Generation: 1})
	}
	if d := plan(start.Add(3*time.Minute), nodes); d.Stall != nil || d.RequeueAfter != 30*time.Second {
		t.Errorf("90 s after n1 joined: stall %+v, requeue %s; want a wait of 30 s more", d.Stall, d.RequeueAfter)
	}
	if d := plan(start.Add(4*time.Minute), nodes); d.Stall == nil || d.Stall.Reason != ReasonAgentTimeout {
		t.Errorf("150 s after n1 joined, silent: %+v, want %s", d.Stall, ReasonAgentTimeout)
	}
	uncreated := slices.Clone(nodes)
	uncreated[1] = Node{Name: "n1", PodCIDR: "10.0.1.0/24", InternalIP: "192.168.0.2"}
	if d := plan(start.Add(time.Hour), uncreated); d.Stall != nil || d.Preflight.Reason != ReasonWaitingForAgents {
		t.Errorf("n1 without its RoutingNode: stall %+v, preflight %+v; want a wait", d.Stall, d.Preflight)
	}
}

// TestNodeJoiningWaits: a node without its podCIDR or InternalIP whose
// agent has not reported is joining, as a kubelet's node is until
// kube-controller-manager allocates its podCIDR: the rollout waits for it
// (Preflight, not Stalled) for the agent timeout, counted as for any agent,
// and only then stalls with NodeMissingFacts. A node whose agent did report
// stalls the rollout at once.
func TestNodeJoiningWaits(t *testing.T) {
	start := time.Unix(1_800_000_000, 0)
	reported := v1alpha1.RoutingNodeStatus{Capabilities: allCaps, PeerSummary: &v1alpha1.PeerSummary{Total: 1}}
	steady := new(Steady(tunnelSpec))
	tests := map[string]struct {
		n1      Node
		after   time.Duration
		stall   string // "" for a wait
		msg     string
		requeue time.Duration
	}{
		"no podCIDR yet, within the timeout": {
			n1:    Node{Name: "n1", InternalIP: "192.168.0.2", HasRoutingNode: true, Created: start.Add(90 * time.Second)},
			after: 3 * time.Minute, msg: `waiting for n1 to join (no agent report yet): node n1 has no valid podCIDR ("")`, requeue: 30 * time.Second,
		},
		"no InternalIP yet, within the timeout": {
			n1:    Node{Name: "n1", PodCIDR: "10.0.1.0/24", HasRoutingNode: true, Created: start},
			after: time.Minute, msg: "node n1 has no InternalIP address", requeue: time.Minute,
		},
		"no RoutingNode yet": {
			n1:    Node{Name: "n1"},
			after: time.Hour, msg: "waiting for n1 to join", requeue: 2 * time.Minute,
		},
		"no podCIDR past the timeout": {
			n1:    Node{Name: "n1", InternalIP: "192.168.0.2", HasRoutingNode: true, Created: start.Add(90 * time.Second)},
			after: 4 * time.Minute, stall: ReasonNodeMissingFacts, msg: "node n1 has no valid podCIDR",
		},
		"no podCIDR, agent reported": {
			n1:    Node{Name: "n1", InternalIP: "192.168.0.2", HasRoutingNode: true, Created: start, Status: reported},
			after: time.Second, stall: ReasonNodeMissingFacts, msg: "node n1 has no valid podCIDR",
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			nodes := []Node{{Name: "n0", PodCIDR: "10.0.0.0/24", InternalIP: "192.168.0.1", HasRoutingNode: true, Created: start.Add(-time.Hour),
				Datapath: steady, Status: reported}, tc.n1}
			d := Plan(Input{Spec: tunnelSpec, Nodes: nodes, Now: start.Add(tc.after), Started: start, Generation: 1})
			if len(d.Updates) != 0 {
				t.Errorf("updates %v; want none before every node has its facts", names(d.Updates))
			}
			if tc.stall == "" {
				if d.Stall != nil || d.Phase != v1alpha1.PhasePreflight || !d.Preflight.Waiting || d.Preflight.Reason != ReasonNodeJoining ||
					!strings.Contains(d.Waiting, tc.msg) || d.RequeueAfter != tc.requeue {
					t.Errorf("got %s, stall %+v, preflight %+v, waiting %q, requeue %s; want a wait (%s) saying %q, requeue %s",
						d.Phase, d.Stall, d.Preflight, d.Waiting, d.RequeueAfter, ReasonNodeJoining, tc.msg, tc.requeue)
				}
				return
			}
			if d.Phase != v1alpha1.PhaseStalled || d.Stall == nil || d.Stall.Reason != tc.stall || !strings.Contains(d.Stall.Message, tc.msg) {
				t.Errorf("got %s, stall %+v; want Stalled %s saying %q", d.Phase, d.Stall, tc.stall, tc.msg)
			}
		})
	}
}

func TestPreflight(t *testing.T) {
	ok := func() []Node {
		var ns []Node
		for i := range 2 {
			ns = append(ns, Node{Name: fmt.Sprintf("n%d", i), PodCIDR: fmt.Sprintf("10.0.%d.0/24", i), InternalIP: fmt.Sprintf("192.168.0.%d", i+1),
				Datapath: new(Steady(tunnelSpec)),
				Status:   v1alpha1.RoutingNodeStatus{Capabilities: allCaps, PeerSummary: &v1alpha1.PeerSummary{Total: 1}}})
		}
		return ns
	}
	tests := map[string]struct {
		spec   v1alpha1.RoutingModeSpec
		mutate func([]Node)
		reason string
		failed bool
		msg    string
	}{
		"passes":             {spec: nativeSpec, reason: ReasonPreflightPassed},
		"pod CIDR outside":   {spec: nativeSpec, mutate: func(n []Node) { n[1].PodCIDR = "10.1.0.0/24" }, reason: ReasonPodCIDROutside, failed: true, msg: "node n1's podCIDR 10.1.0.0/24 is outside nativeRoutingCIDR 10.0.0.0/16"},
		"pod CIDR wider":     {spec: nativeSpec, mutate: func(n []Node) { n[1].PodCIDR = "10.0.0.0/8" }, reason: ReasonPodCIDROutside, failed: true},
		"no pod CIDR":        {spec: tunnelSpec, mutate: func(n []Node) { n[0].PodCIDR = "" }, reason: ReasonNodeMissingFacts, failed: true, msg: "node n0 has no valid podCIDR"},
		"no internal IP":     {spec: tunnelSpec, mutate: func(n []Node) { n[0].InternalIP = "" }, reason: ReasonNodeMissingFacts, failed: true},
		"agent not reported": {spec: nativeSpec, mutate: func(n []Node) { n[1].Status.Capabilities = nil }, reason: ReasonWaitingForAgents, msg: "agent on n1"},
		"joining": {spec: tunnelSpec, mutate: func(n []Node) { n[1].PodCIDR, n[1].Status.Capabilities = "", nil },
			reason: ReasonNodeJoining, msg: `waiting for n1 to join (no agent report yet): node n1 has no valid podCIDR ("")`},
		"one joining, one missing facts": {spec: tunnelSpec, mutate: func(n []Node) { n[0].PodCIDR, n[0].Status.Capabilities, n[1].InternalIP = "", nil, "" },
			reason: ReasonNodeMissingFacts, failed: true, msg: "node n1 has no InternalIP"},
		"geneve unsupported":  {spec: v1alpha1.RoutingModeSpec{Tunnel: v1alpha1.TunnelGeneve, TunnelPort: 6081, HostRouting: "legacy"}, mutate: func(n []Node) { n[0].Datapath = nil; n[1].Datapath = nil }, reason: ReasonTunnelUnsupported, failed: true, msg: "cannot create geneve devices"},
		"no bpf host routing": {spec: nativeSpec, mutate: func(n []Node) { n[1].Status.Capabilities = &v1alpha1.NodeCapabilities{VXLAN: true} }, reason: ReasonHostRoutingUnsup, failed: true},
		"no bpf host routing, the agent says why": {spec: nativeSpec, mutate: func(n []Node) {
			n[1].Status.Capabilities = &v1alpha1.NodeCapabilities{Kernel: "5.15.0", VXLAN: true, BPFHostRoutingReason: `kfunc "bpf_skb_ct_lookup": not supported`}
		}, reason: ReasonHostRoutingUnsup, failed: true, msg: `node n1 cannot run eBPF host routing (kfunc "bpf_skb_ct_lookup": not supported); kernel 5.15.0`},
		"peer behind a gateway": {spec: nativeSpec, mutate: func(n []Node) {
			n[0].Status.PeerSummary = &v1alpha1.PeerSummary{Total: 1, NotDirect: 1, Problems: []v1alpha1.PeerStatus{{Node: "n1", NodeIP: "192.168.0.2"}}}
		}, reason: ReasonPeerNotDirect, failed: true, msg: "node n0 reaches n1 (192.168.0.2) only through a gateway"},
		"peers not reported":      {spec: nativeSpec, mutate: func(n []Node) { n[0].Status.PeerSummary = nil }, reason: ReasonWaitingForAgents, msg: "agent on n0"},
		"not every peer seen yet": {spec: nativeSpec, mutate: func(n []Node) { n[1].Status.PeerSummary.Total = 0 }, reason: ReasonWaitingForAgents, msg: "agent on n1"},
		"tunnel port in place": {spec: v1alpha1.RoutingModeSpec{Tunnel: v1alpha1.TunnelVXLAN, TunnelPort: 4789, HostRouting: "legacy"},
			reason: ReasonTunnelChangeInPlace, failed: true, msg: "switch to tunnel: disabled first"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			nodes := ok()
			if tc.mutate != nil {
				tc.mutate(nodes)
			}
			r := Preflight(Steady(tc.spec), nodes)
			waiting := tc.reason == ReasonWaitingForAgents || tc.reason == ReasonNodeJoining
			if r.Reason != tc.reason || r.Failed != tc.failed || r.Waiting != waiting || !strings.Contains(r.Message, tc.msg) {
				t.Errorf("Preflight = %+v, want reason %s failed %v waiting %v message containing %q", r, tc.reason, tc.failed, waiting, tc.msg)
			}
		})
	}
}

func TestPlanPreflightFailureTouchesNothing(t *testing.T) {
	s := newSim(t, 3, tunnelSpec)
	s.nodes[2].PodCIDR = "10.9.0.0/24"
	s.setSpec(nativeSpec)
	d := s.step()
	if d.Phase != v1alpha1.PhaseStalled || len(d.Updates) != 0 || d.Stall.Reason != ReasonPodCIDROutside {
		t.Fatalf("got %s %+v with updates %v", d.Phase, d.Stall, names(d.Updates))
	}
}
