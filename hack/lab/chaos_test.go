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

// lostOutside sums the loss of the pairs whose pods are both off node.
func (h *harness) lostOutside(r TrafficReport, node string) int64 {
	onNode := map[string]bool{}
	for _, p := range h.l.Pods() {
		onNode[p.Name] = p.Node == node
	}
	var n int64
	for key, lost := range r.LostByPair {
		src, dst, _ := strings.Cut(key, "->")
		if !onNode[src] && !onNode[dst] {
			n += lost
		}
	}
	return n
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

// firstSwitching watches the RoutingNodes until one of them is told to
// Switch for the RoutingMode's current generation, and returns its name:
// the first batch is switching. It also returns the sequence of steps each
// node was given, collected until stop is called, for checking that no
// node is skipped or repeated.
func (h *harness) firstSwitching(ctx context.Context) (node string, steps func() map[string][]v1alpha1.RolloutStep) {
	h.t.Helper()
	watcher := h.watch(ctx, &v1alpha1.RoutingNodeList{})
	seen := map[string][]v1alpha1.RolloutStep{}
	found := make(chan string, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ev := range watcher.ResultChan() {
			rn, ok := ev.Object.(*v1alpha1.RoutingNode)
			if !ok {
				continue
			}
			if s := seen[rn.Name]; len(s) == 0 || s[len(s)-1] != rn.Spec.Step {
				seen[rn.Name] = append(s, rn.Spec.Step)
			}
			if rn.Spec.Step == v1alpha1.StepSwitch {
				select {
				case found <- rn.Name:
				default:
				}
			}
		}
	}()
	stop := func() map[string][]v1alpha1.RolloutStep {
		watcher.Stop()
		<-done
		return seen
	}
	select {
	case node = <-found:
		return node, stop
	case <-time.After(2 * time.Minute):
		stop()
		h.t.Fatal("no RoutingNode was told to Switch within 2 minutes")
		return "", nil
	}
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
	node   string // the first node told to Switch, where the fault was injected
	report TrafficReport
	err    error // WaitRollout's: nil when the rollout completed
	steps  map[string][]v1alpha1.RolloutStep
}

// chaosRun switches the lab to spec under traffic and, once the first
// batch is switching, runs inject; then waits for the rollout to complete
// or stall and records the row. hitsNode says whether the fault is the
// switching node's, whose paths are then left out of "lost outside".
func (h *harness) chaosRun(fault, spec string, hitsNode bool, inject func(node string) time.Duration) chaosOutcome {
	h.t.Helper()
	ctx := context.Background()
	tr, err := h.l.StartTraffic(ctx, 600, 8472)
	if err != nil {
		h.t.Fatal(err)
	}
	watchCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	if out, err := h.apply(spec); err != nil {
		tr.Stop()
		h.t.Fatalf("kubectl apply: %v\n%s", err, out)
	}
	var o chaosOutcome
	var steps func() map[string][]v1alpha1.RolloutStep
	o.node, steps = h.firstSwitching(watchCtx)
	injected := time.Now()
	back := inject(o.node)
	h.t.Logf("%s: injected while %s was switching; back after %s", fault, o.node, back.Round(time.Millisecond))
	_, o.err = h.l.WaitRollout(ctx, h.c, 3*time.Minute, func(line string) { h.t.Logf("%s: %s", fault, line) })
	recovered := time.Since(injected)
	o.report = tr.Stop()
	o.steps = steps()
	outcome := "completed"
	if o.err != nil {
		outcome = o.err.Error()
	}
	faulty := ""
	if hitsNode {
		faulty = o.node
	}
	h.record(chaosRow{fault: fault, when: "first batch switching", rollout: outcome, report: o.report,
		lostOutside: h.lostOutside(o.report, faulty), recover: recovered})
	return o
}

// chaosSwitch is chaosRun for faults the switch must ride out: the
// rollout completes, nothing is lost, no TCP connection breaks, and the
// kernels hold the invariant.
func (h *harness) chaosSwitch(fault, spec string, hitsNode bool, inject func(node string) time.Duration) map[string][]v1alpha1.RolloutStep {
	h.t.Helper()
	o := h.chaosRun(fault, spec, hitsNode, inject)
	if o.err != nil {
		h.t.Fatalf("%s: %v", fault, o.err)
	}
	r := o.report
	if r.UDP.Sent == 0 || r.UDP.Lost != 0 || r.UDP.Duplicates != 0 {
		h.t.Errorf("%s: %d probes sent, %d lost, %d duplicated; want none lost", fault, r.UDP.Sent, r.UDP.Lost, r.UDP.Duplicates)
	}
	if r.TCP.Messages == 0 || r.TCP.Resets != 0 || r.TCP.Errors != 0 || r.TCP.Reconnects != 0 {
		h.t.Errorf("%s: TCP %s; want no reset, error or reconnect", fault, r.TCP)
	}
	if err := h.kernelInvariant(); err != nil {
		h.t.Errorf("%s: after the rollout: %v", fault, err)
	}
	return o.steps
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
	o := h.chaosRun("agent SIGKILL, never restarted (tunnel→native+bpf, healthCheckTimeout 10s)",
		nativeSpec+"  rollout:\n    healthCheckTimeout: 10s\n", true, func(node string) time.Duration {
			i := slices.IndexFunc(h.l.Nodes, func(n Node) bool { return n.NS == node })
			if err := h.l.stopSupervised("agent-" + node); err != nil {
				t.Fatal(err)
			}
			stopped = &h.l.Nodes[i]
			return 0
		})
	if o.err == nil || !strings.Contains(o.err.Error(), "stalled") || !strings.Contains(o.err.Error(), o.node) {
		t.Errorf("rollout outcome %v; want Stalled with a message naming %s", o.err, o.node)
	}
	if lost := h.lostOutside(o.report, o.node); lost != 0 {
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

// TestChaosAgentKilledDuringSwitch SIGKILLs the agent of the first node to
// switch, in both directions; its supervisor restarts it 2 s later. The
// datapath keeps forwarding without it and the restarted agent adopts the
// kernel state, so the rollout completes with nothing lost.
func TestChaosAgentKilledDuringSwitch(t *testing.T) {
	h := newHarness(t)
	kill := func(node string) time.Duration { return h.killAndWaitRestart("agent-" + node) }
	h.chaosSwitch("agent SIGKILL, restarted (tunnel→native+bpf)", nativeSpec, true, kill)
	h.agentsInNodeNamespaces()
	h.chaosSwitch("agent SIGKILL, restarted (native+bpf→tunnel)", tunnelSpec, true, kill)
}

// TestChaosOperatorKilledDuringSwitch SIGKILLs the operator while the
// first batch switches; its supervisor restarts it 2 s later and it takes
// the lease back. No node is skipped or switched twice.
func TestChaosOperatorKilledDuringSwitch(t *testing.T) {
	h := newHarness(t)
	kill := func(string) time.Duration { return h.killAndWaitRestart("operator") }
	for _, tc := range []struct{ name, spec string }{
		{"operator SIGKILL, restarted (tunnel→native+bpf)", nativeSpec},
		{"operator SIGKILL, restarted (native+bpf→tunnel)", tunnelSpec},
	} {
		steps := h.chaosSwitch(tc.name, tc.spec, false, kill)
		for node, s := range steps {
			if n := count(s, v1alpha1.StepSwitch); n != 1 {
				t.Errorf("%s: %s was told to Switch %d times (steps %v); want once", tc.name, node, n, s)
			}
		}
		if len(steps) != len(h.l.Nodes) {
			t.Errorf("%s: steps seen for %d nodes (%v); want all %d", tc.name, len(steps), steps, len(h.l.Nodes))
		}
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

// freeze stops the supervised process name with SIGSTOP for d, then lets
// it continue: a hung process, whose clients see connections that neither
// answer nor close. Its supervisor does not notice, as a kubelet without
// a liveness probe would not. The process is continued even when the test
// fails meanwhile.
func (h *harness) freeze(name string, d time.Duration) time.Duration {
	h.t.Helper()
	pid, err := h.l.supervisedPID(name)
	if err != nil {
		h.t.Fatal(err)
	}
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		h.t.Fatalf("stopping %s (pid %d): %v", name, pid, err)
	}
	resume := func() { _ = syscall.Kill(pid, syscall.SIGCONT) }
	h.t.Cleanup(resume)
	// The fault's own length, not a wait for something to happen.
	time.Sleep(d)
	resume()
	return d
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
		freeze := func(string) time.Duration { return h.freeze(component, d) }
		h.chaosSwitch(fmt.Sprintf("%s frozen %s (tunnel→native+bpf)", component, d), nativeSpec, false, freeze)
		h.chaosSwitch(fmt.Sprintf("%s frozen %s (native+bpf→tunnel)", component, d), tunnelSpec, false, freeze)
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
	steps := h.chaosSwitch(fault, nativeSpec, false, func(string) time.Duration {
		if err := h.l.stopSupervised("operator"); err != nil {
			t.Fatal(err)
		}
		killed = true
		return 0
	})
	for node, s := range steps {
		if n := count(s, v1alpha1.StepSwitch); n != 1 {
			t.Errorf("%s was told to Switch %d times (steps %v); want once", node, n, s)
		}
	}
	if len(steps) != len(h.l.Nodes) {
		t.Errorf("steps seen for %d nodes (%v); want all %d", len(steps), steps, len(h.l.Nodes))
	}
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

func count[T comparable](s []T, v T) int {
	n := 0
	for _, x := range s {
		if x == v {
			n++
		}
	}
	return n
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
func (h *harness) kernelInvariant() error {
	views := map[string]kernelView{}
	for _, n := range h.l.Nodes {
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
