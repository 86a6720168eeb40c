package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/routemode/routemode/agent/cniconf"
	"github.com/routemode/routemode/agent/datapath"
	"github.com/routemode/routemode/api/v1alpha1"
)

// The chaos suite: faults injected at a chosen point of a live switch,
// with the numbered UDP probes and long-lived TCP connections running, in
// the shared 3-node lab (maxUnavailable 1). The point is chosen by
// watching the RoutingNodes, never by waiting a guessed time. After each
// case the make-before-break invariant is checked against the kernel state
// read from every node. Each case logs one row of the table in
// docs/reliability.md; CHAOS_TABLE=<file> appends the rows there.

// chaosRow is one line of the table.
type chaosRow struct {
	fault, when, rollout string
	report               TrafficReport
	// lostOutside is the loss between pods on nodes other than the one
	// the fault hit (all loss when it hit no node's datapath).
	lostOutside int64
	recover     time.Duration
}

func (r chaosRow) String() string {
	return fmt.Sprintf("| %s | %s | %d | %d | %d | %d | %s | %s |", r.fault, r.when, r.report.UDP.Sent, r.report.UDP.Lost,
		r.lostOutside, r.report.TCP.Resets, r.rollout, r.recover.Round(100*time.Millisecond))
}

// record logs the row and appends it to $CHAOS_TABLE when set.
func (h *harness) record(r chaosRow) {
	h.t.Helper()
	h.t.Logf("chaos: %s", r)
	path := os.Getenv("CHAOS_TABLE")
	if path == "" {
		return
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		h.t.Fatal(err)
	}
	defer f.Close()
	if _, err := fmt.Fprintln(f, r); err != nil {
		h.t.Fatal(err)
	}
}

// watchPoints follows the RoutingNodes until the test ends.
func (h *harness) watchPoints(ctx context.Context) *PointWatch {
	h.t.Helper()
	w, err := h.l.WatchPoints(ctx)
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(w.Stop)
	return w
}

// killAndWaitRestart SIGKILLs the supervised process name and waits until
// its supervisor started it again, returning how long that took.
func (h *harness) killAndWaitRestart(name string) time.Duration {
	h.t.Helper()
	pid, err := h.l.supervisedPID(name)
	if err != nil {
		h.t.Fatal(err)
	}
	start := time.Now()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		h.t.Fatalf("killing %s (pid %d): %v", name, pid, err)
	}
	deadline := start.Add(MaxRestartBackoff + 10*time.Second)
	for time.Now().Before(deadline) {
		if now, err := h.l.supervisedPID(name); err == nil && now != pid {
			return time.Since(start)
		}
		time.Sleep(20 * time.Millisecond)
	}
	h.t.Fatalf("%s (pid %d) was not restarted within %s", name, pid, MaxRestartBackoff+10*time.Second)
	return 0
}

// chaosOutcome is what one case saw.
type chaosOutcome struct {
	node   string // the node the injection point chose ("" from the start)
	report TrafficReport
	err    error // WaitRollout's: nil when the rollout completed
	steps  map[string][]v1alpha1.RolloutStep
	// note is what inject reported, added to the row's outcome.
	note string
}

// chaosCase is one row: a fault injected at a point of a switch to spec.
type chaosCase struct {
	fault string
	spec  string
	at    RolloutPoint
	// hitsNode: the fault is the chosen node's, whose paths are then left
	// out of "lost outside".
	hitsNode bool
	// inject runs the fault at the point on the node it chose and returns
	// how long until the fault was over, and a note for the row.
	inject func(node string) (time.Duration, string)
	// use, when set, picks the pods the traffic runs between; all
	// otherwise.
	use func(PodState) bool
	// watch, when set, is given the case's RoutingNode watch before the
	// spec is applied.
	watch func(*PointWatch)
	// settle, when set, replaces waiting for the rollout: for faults after
	// which no rollout completes by itself. The traffic still runs.
	settle func(w *PointWatch, tr *Traffic) error
	// after, when set, runs once the traffic stopped; what it returns is
	// added to the row's outcome.
	after func() string
	// tcpTimeout, when set, is how long a TCP message may take to be
	// echoed before its connection counts as broken (2 s otherwise).
	tcpTimeout time.Duration
}

// chaosRun switches the lab to c.spec under traffic, runs c.inject at
// c.at, then waits for the rollout to complete or stall and records the
// row.
func (h *harness) chaosRun(c chaosCase) chaosOutcome {
	h.t.Helper()
	ctx := context.Background()
	tr, err := h.l.StartTrafficWith(ctx, 600, 8472, TrafficOptions{Use: c.use, TCPTimeout: c.tcpTimeout})
	if err != nil {
		h.t.Fatal(err)
	}
	watchCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	w := h.watchPoints(watchCtx)
	if c.watch != nil {
		c.watch(w)
	}
	var o chaosOutcome
	var back time.Duration
	injected := time.Now()
	if c.at == FromStart {
		back, o.note = c.inject("")
	}
	if out, err := h.apply(c.spec); err != nil {
		tr.Stop()
		h.t.Fatalf("kubectl apply: %v\n%s", err, out)
	}
	if c.at != FromStart {
		if o.node, err = w.WaitFor(c.at, len(h.l.Nodes), 2*time.Minute); err != nil {
			tr.Stop()
			h.t.Fatal(err)
		}
		injected = time.Now()
		back, o.note = c.inject(o.node)
	}
	h.t.Logf("%s: injected at %q (node %q); over after %s", c.fault, c.at, o.node, back.Round(time.Millisecond))
	if c.settle != nil {
		o.err = c.settle(w, tr)
	} else {
		_, o.err = h.l.WaitRollout(ctx, h.c, 3*time.Minute, func(line string) { h.t.Logf("%s: %s", c.fault, line) })
	}
	recovered := time.Since(injected)
	o.report = tr.Stop()
	o.steps = w.Steps()
	outcome := "completed"
	if o.err != nil {
		outcome = o.err.Error()
	}
	if c.after != nil {
		o.note = strings.Join(slices.DeleteFunc([]string{o.note, c.after()}, func(s string) bool { return s == "" }), "; ")
	}
	if o.note != "" {
		outcome += "; " + o.note
	}
	faulty := ""
	if c.hitsNode {
		faulty = o.node
	}
	h.record(chaosRow{fault: c.fault, when: c.at.String(), rollout: outcome, report: o.report,
		lostOutside: h.l.LostOutside(o.report, faulty), recover: recovered})
	return o
}

// chaosSwitch is chaosRun for faults the switch must ride out: the
// rollout completes, nothing is lost, no TCP connection breaks, and the
// kernels of the nodes the traffic ran between hold the invariant.
func (h *harness) chaosSwitch(c chaosCase) chaosOutcome {
	h.t.Helper()
	o := h.chaosRun(c)
	if o.err != nil {
		h.t.Fatalf("%s at %q: %v", c.fault, c.at, o.err)
	}
	h.noLoss(c.fault, o.report)
	var nodes []Node
	for _, n := range h.l.Nodes {
		if c.use == nil || slices.ContainsFunc(h.l.Pods(), func(p PodState) bool { return p.Node == n.NS && c.use(p) }) {
			nodes = append(nodes, n)
		}
	}
	if err := h.kernelInvariantOf(nodes); err != nil {
		h.t.Errorf("%s: after the rollout: %v", c.fault, err)
	}
	return o
}

// noLoss fails unless traffic flowed with no probe lost or duplicated and
// no TCP connection broken.
func (h *harness) noLoss(what string, r TrafficReport) {
	h.t.Helper()
	if r.UDP.Sent == 0 || r.UDP.Lost != 0 || r.UDP.Duplicates != 0 {
		// The whole report: a loss of the tool (send errors, its own
		// socket's drops) reads differently from one of the network.
		h.t.Errorf("%s: %d probes sent, %d lost, %d duplicated; want none lost: UDP %s; by pair:\n%s\nthe lab's logs within 1s of the lost probes:\n%s",
			what, r.UDP.Sent, r.UDP.Lost, r.UDP.Duplicates, r.UDP, r.Troubled(), h.l.LogsAround(r.UDP.LostSent, time.Second, 80))
	}
	if r.TCP.Messages == 0 || r.TCP.Resets != 0 || r.TCP.Errors != 0 || r.TCP.Reconnects != 0 {
		h.t.Errorf("%s: TCP %s; want no reset, error or reconnect", what, r.TCP)
	}
}

// TestChaosAgentStoppedForGood SIGKILLs the agent of the first node to
// switch, and its supervisor, so it never comes back. With
// healthCheckTimeout 10s the node fails its step and the rollout stalls
// with a message naming it; nothing is lost between the other nodes. The
// agent is then started again and the lab switched back to the tunnel.
func TestChaosAgentStoppedForGood(t *testing.T) {
	h := newHarness(t)
	var stopped *Node
	t.Cleanup(func() {
		// Whatever happened, the lab's other tests need the agent.
		if stopped != nil {
			if err := h.l.spawnAgent(*stopped); err != nil {
				t.Errorf("starting %s's agent again: %v", stopped.NS, err)
			}
		}
	})
	o := h.chaosRun(chaosCase{fault: "agent SIGKILL, never restarted (tunnel→native+bpf, healthCheckTimeout 10s)",
		spec: nativeSpec + "  rollout:\n    healthCheckTimeout: 10s\n", at: FirstSwitching, hitsNode: true,
		inject: func(node string) (time.Duration, string) {
			if err := h.l.stopSupervised("agent-" + node); err != nil {
				t.Fatal(err)
			}
			stopped = h.l.node(node)
			return 0, ""
		}})
	if o.err == nil || !strings.Contains(o.err.Error(), "stalled") || !strings.Contains(o.err.Error(), o.node) {
		t.Errorf("rollout outcome %v; want Stalled with a message naming %s", o.err, o.node)
	}
	if lost := h.l.LostOutside(o.report, o.node); lost != 0 {
		t.Errorf("%d probes lost between the nodes other than %s; want none", lost, o.node)
	}
	for n, s := range o.steps {
		if n != o.node && slices.Contains(s, v1alpha1.StepSwitch) {
			t.Errorf("%s was told to Switch (steps %v) after %s failed; want the rollout halted", n, s, o.node)
		}
	}
	if err := h.l.spawnAgent(*stopped); err != nil {
		t.Fatal(err)
	}
	stopped = nil
	h.rollout("back to the tunnel with the agent restarted", tunnelSpec, encapsulated)
	if err := h.kernelInvariant(); err != nil {
		t.Errorf("after switching back: %v", err)
	}
}

// TestChaosAgentKilledDuringSwitch SIGKILLs the agent of the node each
// injection point chooses, at every point of the rollout; its supervisor
// restarts it 2 s later (doubling when the same agent is killed again
// within a minute). The datapath keeps forwarding without it, the
// restarted agent adopts the kernel state with no change it did not need,
// and the rollout completes with nothing lost. make chaos runs every point
// both ways; make test each point once, alternating directions in an
// order that kills agents after Prepare and during Finalize with eBPF host
// routing on, where adopting the running programs matters.
func TestChaosAgentKilledDuringSwitch(t *testing.T) {
	h := newHarness(t)
	for i, at := range []RolloutPoint{FirstSwitching, AfterPrepare, Finalizing, LastSwitching} {
		ways := switches
		if !chaosFull() {
			ways = switches[i%2 : i%2+1]
		}
		for _, way := range ways {
			h.chaosSwitch(chaosCase{fault: "agent SIGKILL, restarted (" + way.name + ")", spec: way.spec, at: at, hitsNode: true, inject: h.killAgent})
			h.agentsInNodeNamespaces()
		}
	}
}

// switches are the two directions of the chaos suite's switch; in this
// order, every pair of them returns the lab to the tunnel.
var switches = []struct{ name, spec string }{
	{"tunnel→native+bpf", nativeSpec},
	{"native+bpf→tunnel", tunnelSpec},
}

// chaosFull says whether to run the whole matrix (make chaos sets
// CHAOS_FULL=1) rather than the short form make test runs.
func chaosFull() bool { return os.Getenv("CHAOS_FULL") != "" }

// killAgent SIGKILLs node's agent, waits until its supervisor started it
// again and until the new agent's first reconcile logged what it changed.
// When the killed agent had reported the generation the new one finds
// applied, that must be nothing: the kernel kept it all. Otherwise the
// changes are the step's own, as the note says.
func (h *harness) killAgent(node string) (time.Duration, string) {
	h.t.Helper()
	log := h.l.path("logs", "agent-"+node+".log")
	fi, err := os.Stat(log)
	if err != nil {
		h.t.Fatal(err)
	}
	var rn v1alpha1.RoutingNode
	if err := h.c.Get(context.Background(), client.ObjectKey{Name: node}, &rn); err != nil {
		h.t.Fatal(err)
	}
	// What the killed agent last reported applied, maybe an earlier step.
	var had int64
	if meta.IsStatusConditionTrue(rn.Status.Conditions, v1alpha1.ConditionDatapathApplied) {
		had = rn.Status.ObservedGeneration
	}
	back := h.killAndWaitRestart("agent-" + node)
	var a Adoption
	if err := wait(context.Background(), time.Minute, "the restarted agent's first reconcile", func() (bool, error) {
		b, err := os.ReadFile(log)
		if err != nil || int64(len(b)) < fi.Size() {
			return false, err
		}
		var found bool
		a, found, err = FindAdoption(string(b[fi.Size():]))
		return found, err
	}); err != nil {
		h.t.Fatal(err)
	}
	h.t.Logf("%s's restarted agent: %s", node, a.Describe(had))
	note, err := a.Versus(had)
	if err != nil {
		h.t.Errorf("%s: %v", node, err)
	}
	return back, note
}

// TestChaosOperatorKilledDuringSwitch SIGKILLs the operator while the
// first batch switches; its supervisor restarts it 2 s later and it takes
// the lease back. No node is skipped or switched twice.
func TestChaosOperatorKilledDuringSwitch(t *testing.T) {
	h := newHarness(t)
	kill := func(string) (time.Duration, string) { return h.killAndWaitRestart("operator"), "" }
	for _, way := range switches {
		name := "operator SIGKILL, restarted (" + way.name + ")"
		h.onceEach(name, h.chaosSwitch(chaosCase{fault: name, spec: way.spec, at: FirstSwitching, inject: kill}).steps)
	}
}

// onceEach fails unless every node was told to Switch exactly once.
func (h *harness) onceEach(what string, steps map[string][]v1alpha1.RolloutStep) {
	h.t.Helper()
	if err := SwitchedOnce(steps, len(h.l.Nodes)); err != nil {
		h.t.Errorf("%s: %v", what, err)
	}
}

// chaosFreeze is how long a control-plane process stays frozen:
// $CHAOS_FREEZE (make chaos sets the 60s), else 15s, so the short
// form in make test stays short.
func chaosFreeze(t *testing.T) time.Duration {
	v := os.Getenv("CHAOS_FREEZE")
	if v == "" {
		return 15 * time.Second
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		t.Fatalf("CHAOS_FREEZE=%q: %v", v, err)
	}
	return d
}

// freeze suspends the supervised process name for d, then lets it
// continue (see Lab.Suspend), even when the test fails meanwhile.
func (h *harness) freeze(name string, d time.Duration) time.Duration {
	h.t.Helper()
	resume := h.suspend(name)
	// The fault's own length, not a wait for something to happen.
	time.Sleep(d)
	resume()
	return d
}

// suspend is Lab.Suspend, resumed by the test's cleanup too should the
// test fail first.
func (h *harness) suspend(name string) (resume func()) {
	h.t.Helper()
	resume, err := h.l.Suspend(name)
	if resume != nil {
		h.t.Cleanup(resume)
	}
	if err != nil {
		h.t.Fatal(err)
	}
	return resume
}

// TestChaosControlPlaneFrozenDuringSwitch freezes kube-apiserver, and
// separately etcd, while the first batch switches. The nodes keep
// forwarding on their own; the agents and the operator reconnect (the
// operator, having lost its lease, exits and is restarted by its
// supervisor) and the rollout completes with nothing lost.
func TestChaosControlPlaneFrozenDuringSwitch(t *testing.T) {
	h := newHarness(t)
	d := chaosFreeze(t)
	for _, component := range []string{"kube-apiserver", "etcd"} {
		freeze := func(string) (time.Duration, string) { return h.freeze(component, d), "" }
		for _, way := range switches {
			h.chaosSwitch(chaosCase{fault: fmt.Sprintf("%s frozen %s (%s)", component, d, way.name), spec: way.spec, at: FirstSwitching, inject: freeze})
		}
	}
}

// TestChaosOperatorFailover runs a second operator replica and SIGKILLs
// the first, the leader, with its supervisor while the first batch
// switches: the standby takes the lease over once it expires and finishes
// the rollout; no node is skipped or switched twice, nothing is lost. The
// killed replica is started again afterwards, as a standby.
func TestChaosOperatorFailover(t *testing.T) {
	h := newHarness(t)
	if err := h.l.spawnOperator("operator-standby"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := h.l.stopSupervised("operator-standby"); err != nil {
			t.Errorf("stopping the standby replica: %v", err)
		}
	})
	killed := false
	t.Cleanup(func() {
		if killed {
			if err := h.l.spawnOperator("operator"); err != nil {
				t.Errorf("starting the first replica again: %v", err)
			}
		}
	})
	fault := "operator leader SIGKILL, standby replica takes over (tunnel→native+bpf)"
	h.onceEach(fault, h.chaosSwitch(chaosCase{fault: fault, spec: nativeSpec, at: FirstSwitching, inject: func(string) (time.Duration, string) {
		if err := h.l.stopSupervised("operator"); err != nil {
			t.Fatal(err)
		}
		killed = true
		return 0, ""
	}}).steps)
	// The standby, not a restarted first replica, finished the rollout.
	if b, err := os.ReadFile(h.l.path("logs", "operator-standby.log")); err != nil || !strings.Contains(string(b), "Successfully acquired lease") {
		t.Errorf("the standby replica never led (log read error %v)", err)
	}
	if err := h.l.spawnOperator("operator"); err != nil {
		t.Fatal(err)
	}
	killed = false
	h.rollout("back to the tunnel after the failover", tunnelSpec, encapsulated)
}

// kernelView is what one node's kernel says about how it sends and
// receives, read with ip and from /proc, not from any status.
type kernelView struct {
	tunnelPort  int             // rm_vxlan's UDP port, 0 without the device
	viaTunnel   map[string]bool // per peer: routed into rm_vxlan
	routeMTU    int             // the pods' route MTU, from the CNI configuration
	underlayMTU int
	looseRPF    bool // effective rp_filter (max of all and eth0) is not strict
}

func (h *harness) readKernel(n Node) (kernelView, error) {
	v := kernelView{viaTunnel: map[string]bool{}}
	if out, err := run("ip", "-n", n.NS, "-d", "-j", "link", "show", datapath.TunnelDevice); err == nil {
		var links []struct {
			LinkInfo struct {
				InfoData struct {
					Port int `json:"port"`
				} `json:"info_data"`
			} `json:"linkinfo"`
		}
		if err := json.Unmarshal([]byte(out), &links); err != nil || len(links) != 1 {
			return v, fmt.Errorf("%s: reading %s: %v %q", n.NS, datapath.TunnelDevice, err, out)
		}
		v.tunnelPort = links[0].LinkInfo.InfoData.Port
	}
	out, err := run("ip", "-n", n.NS, "-j", "-4", "route", "show")
	if err != nil {
		return v, err
	}
	var routes []struct {
		Dst string `json:"dst"`
		Dev string `json:"dev"`
	}
	if err := json.Unmarshal([]byte(out), &routes); err != nil {
		return v, fmt.Errorf("%s: routes: %v", n.NS, err)
	}
	for _, p := range h.l.Nodes {
		if p.NS == n.NS {
			continue
		}
		i := slices.IndexFunc(routes, func(r struct {
			Dst string `json:"dst"`
			Dev string `json:"dev"`
		}) bool {
			return r.Dst == p.PodCIDR.String()
		})
		v.viaTunnel[p.NS] = i >= 0 && routes[i].Dev == datapath.TunnelDevice
	}
	cfg, err := cniconf.Read(h.l.nodeDir(n, "net.d"))
	if err != nil {
		return v, fmt.Errorf("%s: %w", n.NS, err)
	}
	v.routeMTU = cfg.RouteMTU
	out, err = run("ip", "-n", n.NS, "-j", "link", "show", "eth0")
	if err != nil {
		return v, err
	}
	var eth []struct {
		MTU int `json:"mtu"`
	}
	if err := json.Unmarshal([]byte(out), &eth); err != nil || len(eth) != 1 {
		return v, fmt.Errorf("%s: eth0: %v", n.NS, err)
	}
	v.underlayMTU = eth[0].MTU
	out, err = run("ip", "netns", "exec", n.NS, "cat", "/proc/sys/net/ipv4/conf/all/rp_filter", "/proc/sys/net/ipv4/conf/eth0/rp_filter")
	if err != nil {
		return v, err
	}
	rpf := 0
	for _, f := range strings.Fields(out) {
		x, err := strconv.Atoi(f)
		if err != nil {
			return v, fmt.Errorf("%s: rp_filter %q", n.NS, out)
		}
		rpf = max(rpf, x)
	}
	v.looseRPF = rpf != 1
	return v, nil
}

// kernelInvariant is the planner's make-before-break invariant over the
// kernels: no node encapsulates towards a node without the tunnel (on the
// same port), no node tunnels at full route MTU, and no two nodes that
// send to each other differently have strict rp_filter.
func (h *harness) kernelInvariant() error { return h.kernelInvariantOf(h.l.Nodes) }

// kernelInvariantOf is kernelInvariant among nodes only.
func (h *harness) kernelInvariantOf(nodes []Node) error {
	views := map[string]kernelView{}
	for _, n := range nodes {
		v, err := h.readKernel(n)
		if err != nil {
			return err
		}
		views[n.NS] = v
	}
	for a, va := range views {
		for b, vb := range views {
			if a == b {
				continue
			}
			if va.viaTunnel[b] {
				if vb.tunnelPort != va.tunnelPort {
					return fmt.Errorf("%s encapsulates towards %s (port %d), which has tunnel port %d", a, b, va.tunnelPort, vb.tunnelPort)
				}
				if va.routeMTU >= va.underlayMTU {
					return fmt.Errorf("%s tunnels towards %s at full route MTU %d", a, b, va.routeMTU)
				}
			}
			if va.viaTunnel[b] != vb.viaTunnel[a] && (!va.looseRPF || !vb.looseRPF) {
				return fmt.Errorf("%s and %s send to each other differently with strict rp_filter", a, b)
			}
		}
	}
	return nil
}
