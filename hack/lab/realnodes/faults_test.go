package realnodes

import (
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/routemode/routemode/agent/datapath"
	"github.com/routemode/routemode/agent/health"
	"github.com/routemode/routemode/api/v1alpha1"
	"github.com/routemode/routemode/hack/lab"
)

// testFaults runs the chaos rows on real nodes, where the kubelet, not
// the netns lab's supervisor, restarts what dies, and kubelets and
// kube-proxies live through the faults too:
//   - the agent's or the leading operator's container SIGKILLed while the
//     first node switches, and restarted by its kubelet; the API server or
//     etcd frozen then, with every kubelet, agent and operator cut off
//     from the cluster's state. The datapath keeps forwarding, no node is
//     skipped or told to Switch twice, the rollout completes, and nothing
//     is lost, reset or failed;
//   - a node's underlay cut once every node applied Prepare, 5% random
//     loss on every underlay, and the first node to switch "rebooted":
//     the health gate holds the rollout while the cut is seen, and loss
//     stays on the faulty node's paths or within what was injected;
//   - the RoutingMode edited back, or deleted and applied again, while
//     the first node switches: the rollout turns round, or stops where it
//     is and starts again from there, and completes in the mode last
//     applied, losing nothing;
//   - a node switched off and its Node deleted while the first node
//     switches, then brought back while the first node of the switch back
//     switches: the rollout completes without it, then with it, and the
//     others' traffic loses nothing.
//
// Three fast nodes finish a rollout in a few seconds, sooner than a fault
// lands once the first node is told to Switch: for the rows that hit that
// moment, once every node has applied Prepare, every agent is held
// (SIGSTOP; the datapath lives in the kernel and forwards on) until the
// fault is in, so a node told to Switch cannot apply it before.
func testFaults(t *testing.T, h *harness) {
	m := &membership{node: h.l.Nodes[len(h.l.Nodes)-1].Name}
	for _, row := range []faultRow{
		{fault: "the switching node's agent SIGKILLed (VXLAN → native + eBPF host routing)", sample: "native-routing.yaml",
			routing: v1alpha1.ActualRoutingNative, host: "bpf", at: lab.FirstSwitching, held: true, inject: killAgent},
		{fault: fmt.Sprintf("kube-apiserver frozen %s (native + eBPF host routing → VXLAN)", freeze), sample: "tunnel.yaml",
			routing: v1alpha1.ActualRoutingTunnel, host: "legacy", at: lab.FirstSwitching, held: true, inject: freezing("kube-apiserver")},
		{fault: "the leading operator SIGKILLed (VXLAN → native + eBPF host routing)", sample: "native-routing.yaml",
			routing: v1alpha1.ActualRoutingNative, host: "bpf", at: lab.FirstSwitching, held: true, inject: killOperator},
		{fault: fmt.Sprintf("etcd frozen %s (native + eBPF host routing → VXLAN)", freeze), sample: "tunnel.yaml",
			routing: v1alpha1.ActualRoutingTunnel, host: "legacy", at: lab.FirstSwitching, held: true, inject: freezing("etcd")},
		{fault: fmt.Sprintf("the underlay of a node not yet switched cut for %s (VXLAN → native + eBPF host routing)", cut), sample: "native-routing.yaml",
			routing: v1alpha1.ActualRoutingNative, host: "bpf", at: lab.AfterPrepare, paused: true, inject: cutUnderlay,
			traffic: acrossTheCut, check: lossOnNodeOnly("it is cut off")},
		{fault: fmt.Sprintf("%d%% random loss on every underlay (native + eBPF host routing → VXLAN)", lossPercent), sample: "tunnel.yaml",
			routing: v1alpha1.ActualRoutingTunnel, host: "legacy", at: lab.FromStart, inject: randomLoss,
			traffic: tolerant, check: lossWithinInjected},
		{fault: "the first node to switch rebooted: its kernel state wiped and its agent SIGKILLed (VXLAN → native + eBPF host routing)", sample: "native-routing.yaml",
			routing: v1alpha1.ActualRoutingNative, host: "bpf", at: lab.FirstSwitching, held: true, inject: reboot,
			traffic: tolerant, check: lossOnNodeOnly("its agent restarts and rebuilds its datapath")},
		{fault: "the RoutingMode edited back to native (native + eBPF host routing → VXLAN → native + eBPF host routing)", sample: "tunnel.yaml",
			routing: v1alpha1.ActualRoutingNative, host: "bpf", at: lab.FirstSwitching, held: true, edited: true, inject: editTo("native-routing.yaml")},
		{fault: "the RoutingMode deleted, then VXLAN applied again (native + eBPF host routing → VXLAN)", sample: "tunnel.yaml",
			routing: v1alpha1.ActualRoutingTunnel, host: "legacy", at: lab.FirstSwitching, held: true, edited: true, inject: deleteThenApply("tunnel.yaml")},
		{fault: "a node removed: switched off and its Node deleted (VXLAN → native + eBPF host routing)", sample: "native-routing.yaml",
			routing: v1alpha1.ActualRoutingNative, host: "bpf", at: lab.FirstSwitching, held: true, inject: m.remove,
			traffic: lab.TrafficOptions{Use: m.elsewhere}, check: m.serviceMayFail, settled: m.removed},
		// Back to where the next phase starts.
		{fault: "that node added again: its kernel wiped, its processes started, its Node registered (native + eBPF host routing → VXLAN)", sample: "tunnel.yaml",
			routing: v1alpha1.ActualRoutingTunnel, host: "legacy", at: lab.FirstSwitching, held: true, inject: m.add,
			traffic: lab.TrafficOptions{Use: m.elsewhere}, settled: m.added},
	} {
		row.run(t, h)
	}
}

// faultRow is one row of testFaults: a switch to sample's mode with a
// fault injected at a point of its rollout.
type faultRow struct {
	fault, sample string
	// routing and host are the mode the row ends in.
	routing v1alpha1.ActualRouting
	host    string
	// at is where inject runs: lab.FromStart, before the apply, or when
	// the rollout reaches that point.
	at lab.RolloutPoint
	// held: every agent is held from the moment every node applied
	// Prepare until inject calls release.
	held bool
	// paused: sample is applied with the rollout paused, and inject
	// unpauses it (it applies f.sample).
	paused bool
	// inject puts the fault in place and returns what to report.
	inject func(t *testing.T, h *harness, f fault) string
	// edited: inject edits or deletes the RoutingMode, so nodes switch
	// twice.
	edited bool
	// traffic narrows or relaxes the traffic the row runs under.
	traffic lab.TrafficOptions
	// check judges the traffic (nil: nothing lost, reset or failed); node
	// is the node the fault hit.
	check func(t *testing.T, h *harness, fault, node string, r lab.TrafficReport)
	// settled replaces the checks once the rollout is done (nil: it
	// completed in routing and host on every node, every node told to
	// Switch once, or for an edited row none finalized before the edit,
	// and every node wired as the API server's pods say).
	settled func(t *testing.T, h *harness, steps map[string][]v1alpha1.RolloutStep)
}

// fault is where a row's fault lands and what its inject may use.
type fault struct {
	// node is the node the rollout point hits; "" from the start.
	node string
	// release lets the held agents go on; a no-op for rows not held.
	release func()
	watch   *lab.PointWatch
	// sample is the row's sample, which the inject of a paused row
	// applies to unpause it.
	sample string
}

// tolerant is the traffic under faults TCP rides out by retransmitting:
// a 10 s cut, or a few drops of one segment in a row, take its
// retransmissions, doubling their wait each time, well past the probe's
// usual 2 s with nothing broken.
var tolerant = lab.TrafficOptions{TCPTimeout: 30 * time.Second}

// acrossTheCut is the traffic under the underlay cut: the node stays cut
// off for as long as the operator takes to count it unhealthy (11 to 19 s
// in loaded runs) and cut more, and TCP's first retransmission after the
// link is back can come as long again after it (its waits double: 0.2 s,
// 0.4 s, ... 25.6 s, 51.2 s).
var acrossTheCut = lab.TrafficOptions{TCPTimeout: 2 * time.Minute}

func (row faultRow) run(t *testing.T, h *harness) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c, err := h.l.Client()
	if err != nil {
		t.Fatal(err)
	}
	w, err := h.l.WatchPoints(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sample := h.sample(row.sample)
	applied := sample
	if row.paused {
		applied = paused(t, sample)
	}
	f := fault{release: func() {}, watch: w, sample: sample}
	// The nodes in the cluster when the row starts.
	nodes := len(h.l.Nodes)
	if h.removed != "" {
		nodes--
	}
	var note string
	r, took := h.underTrafficWith(t, row.traffic, func() error {
		var hold func() func()
		if row.held {
			hold = agentHold(t, h)
		}
		if row.at == lab.FromStart {
			note = row.inject(t, h, f)
		}
		if out, err := h.l.Apply(applied); err != nil {
			return fmt.Errorf("%w\n%s", err, out)
		}
		if hold != nil {
			if _, err := w.WaitFor(lab.AfterPrepare, nodes, 2*time.Minute); err != nil {
				return err
			}
			f.release = hold()
			defer f.release()
		}
		if row.at != lab.FromStart {
			if f.node, err = w.WaitFor(row.at, nodes, 2*time.Minute); err != nil {
				return err
			}
			note = row.inject(t, h, f)
		}
		_, err := h.l.WaitRollout(ctx, c, 5*time.Minute, nil)
		return err
	})
	steps := w.Steps()
	t.Logf("%s at %q (%s): rollout done %s after the apply; %s", row.fault, row.at, f.node, took.Round(100*time.Millisecond), note)
	if row.settled != nil {
		row.settled(t, h, steps)
	} else {
		row.completed(t, h, c, steps)
	}
	if row.check != nil {
		row.check(t, h, row.fault, f.node, r)
	} else {
		h.checkTraffic(t, row.fault, r, "")
	}
}

// completed is a row's checks once the rollout is done, unless the row
// has its own (settled).
func (row faultRow) completed(t *testing.T, h *harness, c client.Client, steps map[string][]v1alpha1.RolloutStep) {
	t.Helper()
	waitComplete(context.Background(), t, h.l, c, row.routing, row.host, len(h.l.Nodes))
	if row.edited {
		// The edit or deletion came before the rollout finished, as the
		// hold makes sure: no node was finalized in between (the first
		// step seen is the previous rollout's).
		t.Logf("%s: steps given %v", row.fault, steps)
		for name, s := range steps {
			if n := slices.Index(s[1:], v1alpha1.StepFinalize); n >= 0 && n != len(s)-2 {
				t.Errorf("%s: %s was finalized before the edit landed (steps %v): the rollout was not overtaken", row.fault, name, s)
			}
		}
	} else if err := lab.SwitchedOnce(steps, len(h.l.Nodes)); err != nil {
		t.Errorf("%s: %v", row.fault, err)
	}
	h.checkWired(t, row.host == "bpf", time.Minute)
}

// paused writes sample with its rollout paused to a file of the test's.
func paused(t *testing.T, sample string) string {
	t.Helper()
	b, err := os.ReadFile(sample)
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	if !strings.Contains(s, "\n  rollout:\n") {
		t.Fatalf("%s has no spec.rollout to pause", sample)
	}
	p := filepath.Join(t.TempDir(), "paused-"+filepath.Base(sample))
	if err := os.WriteFile(p, []byte(strings.Replace(s, "\n  rollout:\n", "\n  rollout:\n    paused: true\n", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// component is one container of a routemode pod, as the API server
// reports it.
type component struct {
	pod, uid, node, containerID string
	restarts                    int
	ready                       bool
}

// components lists the first container of the routemode pods selector
// picks (the agent's or the operator's own: the init container is not
// in containerStatuses).
func components(t *testing.T, h *harness, selector string) []component {
	t.Helper()
	out := h.kubectl(t, "-n", lab.Namespace, "get", "pods", "-l", selector, "-o",
		`jsonpath={range .items[*]}{.metadata.name} {.metadata.uid} {.spec.nodeName} {.status.containerStatuses[0].containerID} {.status.containerStatuses[0].restartCount} {.status.containerStatuses[0].ready}{"\n"}{end}`)
	var cs []component
	for line := range strings.SplitSeq(strings.TrimSpace(out), "\n") {
		f := strings.Fields(line)
		if len(f) != 6 {
			continue // a pod without a container status yet
		}
		n, _ := strconv.Atoi(f[4])
		_, id, _ := strings.Cut(f[3], "://")
		cs = append(cs, component{pod: f[0], uid: f[1], node: f[2], containerID: id, restarts: n, ready: f[5] == "true"})
	}
	return cs
}

// killContainer SIGKILLs the main process of c's container, found by the
// container's cgroup (the kubelet's cgroupfs driver names it after the
// container's ID), calls then, and waits until its kubelet restarted it
// and it is ready again; it returns the restarted component and how long
// that took.
func killContainer(t *testing.T, h *harness, selector string, c component, then func()) (component, time.Duration) {
	t.Helper()
	start := time.Now()
	signalProcess(t, "the container "+c.containerID+" of pod "+c.pod, syscall.SIGKILL, containerMain(c.containerID))
	then()
	var now component
	waitFor(t, 3*time.Minute, "pod "+c.pod+"'s container restarted by its kubelet and ready", func() bool {
		for _, x := range components(t, h, selector) {
			if x.pod == c.pod && x.restarts > c.restarts && x.ready {
				now = x
				return true
			}
		}
		return false
	})
	return now, time.Since(start)
}

// containerMain matches the first process of the container id: the one
// whose parent, the runc shim, is outside the container's cgroup.
func containerMain(id string) func(pid int) bool {
	return func(pid int) bool {
		stat, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		return inContainer(pid, id) && !inContainer(parentOf(stat), id)
	}
}

// parentOf reads the parent pid from a /proc/<pid>/stat's contents.
func parentOf(stat []byte) int {
	s := string(stat)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 2 {
		return 0
	}
	pid, _ := strconv.Atoi(f[1])
	return pid
}

func inContainer(pid int, id string) bool {
	cg, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	return strings.Contains(string(cg), id)
}

const (
	agentSelector    = "app.kubernetes.io/component=agent"
	operatorSelector = "app.kubernetes.io/component=operator"
	// operatorLease is the operator's LeaderElectionID
	// (cmd/routemode-operator).
	operatorLease = "routemode-operator.routemode.io"
)

// agentOn is the agent running on node.
func agentOn(t *testing.T, h *harness, node string) component {
	t.Helper()
	for _, x := range components(t, h, agentSelector) {
		if x.node == node && x.containerID != "" {
			return x
		}
	}
	t.Fatalf("no running agent on %s", node)
	return component{}
}

// killAgent SIGKILLs the agent of the node the fault hits and releases
// the others; once the kubelet restarted it, the new agent's log must say
// it adopted the kernel state, changing nothing when the killed agent had
// already applied the generation it found.
func killAgent(t *testing.T, h *harness, f fault) string {
	t.Helper()
	var rn v1alpha1.RoutingNode
	c, err := h.l.Client()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Get(context.Background(), client.ObjectKey{Name: f.node}, &rn); err != nil {
		t.Fatal(err)
	}
	var had int64
	if meta.IsStatusConditionTrue(rn.Status.Conditions, v1alpha1.ConditionDatapathApplied) {
		had = rn.Status.ObservedGeneration
	}
	agent := agentOn(t, h, f.node)
	restarted, back := killContainer(t, h, agentSelector, agent, f.release)
	// The kubelet keeps each run of a container in <restart count>.log.
	i := h.nodeIndex(t, f.node)
	log := filepath.Join(h.l.NodeRoot(i), "var", "log", "pods", lab.Namespace+"_"+agent.pod+"_"+agent.uid, "agent", strconv.Itoa(restarted.restarts)+".log")
	var a lab.Adoption
	waitFor(t, time.Minute, "the restarted agent's adoption in "+log, func() bool {
		b, _ := os.ReadFile(log)
		var found bool
		a, found, err = lab.FindAdoption(string(b))
		return found || err != nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s's restarted agent: %s", f.node, a.Describe(had))
	// The health endpoint's namespace is bind-mounted in the agent's own
	// container (its /var/run/netns is HostToContainer; Bidirectional
	// would need a privileged container), so it dies with the container
	// and the restarted agent wires a new one, as Cilium's agent recreates
	// cilium-health's endpoint at every start. Any other change at a
	// generation already applied is one the kernel did not need.
	healthIP := datapath.RouterIP(h.l.Nodes[i].PodCIDR).Next()
	a.Changes = slices.DeleteFunc(a.Changes, func(c string) bool {
		return strings.Contains(c, health.DefaultNSName(f.node)) || strings.Contains(c, health.LXCName) || c == "endpoint map: write "+healthIP.String()
	})
	note, err := a.Versus(had)
	if err != nil {
		t.Errorf("%s: %v", f.node, err)
	}
	return fmt.Sprintf("agent restarted by the kubelet in %s; %s", back.Round(100*time.Millisecond), note)
}

// reboot "reboots" the node the fault hits, its agent held: everything
// the agent made in the node's kernel is wiped (lab.WipeNodeKernel), then
// the agent is SIGKILLed, as the machine going down ends it, and the
// others released. The kubelet starts it again and it must rebuild its
// node from the API state.
func reboot(t *testing.T, h *harness, f fault) string {
	t.Helper()
	agent := agentOn(t, h, f.node)
	if err := h.l.WipeNodeKernel(f.node); err != nil {
		t.Fatalf("wiping %s: %v", f.node, err)
	}
	_, back := killContainer(t, h, agentSelector, agent, f.release)
	return fmt.Sprintf("kernel state wiped, agent restarted by the kubelet and ready in %s", back.Round(100*time.Millisecond))
}

// killOperator SIGKILLs the operator replica holding the leader lease;
// the other replica takes the lease over once it expires, and the kubelet
// restarts the killed one; the agents are released once it is killed.
func killOperator(t *testing.T, h *harness, f fault) string {
	t.Helper()
	lease := func() string {
		return strings.TrimSpace(h.kubectl(t, "-n", lab.Namespace, "get", "lease", operatorLease, "-o", "jsonpath={.spec.holderIdentity}"))
	}
	// The identity is controller-runtime's: the hostname, which for the
	// host-network operator is its node's, then "_" and a UUID.
	holder := lease()
	node := holder[:max(strings.LastIndexByte(holder, '_'), 0)]
	var leaders []component
	for _, x := range components(t, h, operatorSelector) {
		if x.node == node {
			leaders = append(leaders, x)
		}
	}
	if len(leaders) != 1 {
		t.Fatalf("the lease is held by %q: want one operator replica on node %q, found %v", holder, node, leaders)
	}
	_, back := killContainer(t, h, operatorSelector, leaders[0], f.release)
	return fmt.Sprintf("operator %s restarted by the kubelet in %s; the lease, held by %s before, is held by %s", leaders[0].pod, back.Round(100*time.Millisecond), holder, lease())
}

// freeze is how long the API server stays frozen: 15 s, as in make test's
// short form of the netns lab's chaos suite; long enough for the
// operator to lose its leader lease (renewed every 2 s, given up after
// 10 s) and exit.
const freeze = 15 * time.Second

// freezing is a fault that stops the lab's process name (kube-apiserver
// or etcd) with SIGSTOP for freeze: with kube-apiserver, the kubelets,
// kube-proxies, agents and operators all hold connections that neither
// answer nor close; with etcd, the API server does, and answers them with
// errors and timeouts. The agents are released once it is frozen.
func freezing(name string) func(t *testing.T, h *harness, f fault) string {
	return func(t *testing.T, h *harness, f fault) string {
		t.Helper()
		resume, err := h.l.Suspend(name)
		if resume != nil {
			defer resume()
		}
		if err != nil {
			t.Fatal(err)
		}
		f.release()
		// The fault's own length, not a wait for something to happen.
		time.Sleep(freeze)
		return fmt.Sprintf("%s frozen %s", name, freeze)
	}
}

// editTo is a fault that applies sample over the RoutingMode being rolled
// out, as a user changing their mind mid-rollout would, and releases the
// agents once the operator has seen it.
func editTo(sample string) func(t *testing.T, h *harness, f fault) string {
	return func(t *testing.T, h *harness, f fault) string {
		t.Helper()
		if out, err := h.l.Apply(h.sample(sample)); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		c, err := h.l.Client()
		if err != nil {
			t.Fatal(err)
		}
		waitFor(t, time.Minute, "the operator to see the edit", func() bool {
			var rm v1alpha1.RoutingMode
			err := c.Get(context.Background(), client.ObjectKey{Name: "default"}, &rm)
			return err == nil && rm.Status.ObservedGeneration == rm.Generation
		})
		f.release()
		return "applied " + sample + "; the operator saw it before any agent applied the Switch"
	}
}

// agentHold finds the main process of every node's agent container now,
// so that hold, called when the moment comes, stops them all (SIGSTOP) in
// as many signals; the release it returns lets them go on, and runs at
// the test's end too if it was not called. A held agent applies nothing
// and its node's health endpoint answers no probe.
func agentHold(t *testing.T, h *harness) (hold func() (release func())) {
	t.Helper()
	var pids []int
	for _, x := range components(t, h, agentSelector) {
		pids = append(pids, findProcess(t, "the agent container "+x.containerID, containerMain(x.containerID)))
	}
	return func() func() {
		for _, pid := range pids {
			if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
				t.Fatal(err)
			}
		}
		release := sync.OnceFunc(func() {
			for _, pid := range pids {
				_ = syscall.Kill(pid, syscall.SIGCONT)
			}
		})
		t.Cleanup(release)
		return release
	}
}

// deleteThenApply is a fault that deletes the RoutingMode being rolled out,
// which stops the rollout where it is (docs/rollout.md), and releases the
// agents once it is gone; then it waits until every node applied the step
// it was left with, and applies sample again: the traffic, checked over
// the whole row, runs in that state meanwhile.
func deleteThenApply(sample string) func(t *testing.T, h *harness, f fault) string {
	return func(t *testing.T, h *harness, f fault) string {
		t.Helper()
		out, err := h.l.Kubectl("delete", "routingmode", "default")
		f.release()
		if err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		c, err := h.l.Client()
		if err != nil {
			t.Fatal(err)
		}
		var steps []string
		settled := waitFor(t, time.Minute, "every node to apply the step the deletion left it", func() bool {
			var rns v1alpha1.RoutingNodeList
			if err := c.List(context.Background(), &rns); err != nil || len(rns.Items) != len(h.l.Nodes) {
				return false
			}
			steps = steps[:0]
			for _, rn := range rns.Items {
				if rn.Spec.Datapath == nil || rn.Status.ObservedGeneration != rn.Generation ||
					!meta.IsStatusConditionTrue(rn.Status.Conditions, v1alpha1.ConditionDatapathApplied) {
					return false
				}
				steps = append(steps, fmt.Sprintf("%s %s→%s", rn.Name, rn.Spec.Step, rn.Spec.Datapath.SendMode))
			}
			return true
		})
		if out, err := h.l.Apply(h.sample(sample)); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		return fmt.Sprintf("stopped with %s, all applied %s after the deletion; %s applied again", strings.Join(steps, ", "), settled.Round(100*time.Millisecond), sample)
	}
}

// nodeIndex is the lab's index of the node named name.
func (h *harness) nodeIndex(t *testing.T, name string) int {
	t.Helper()
	for i, n := range h.l.Nodes {
		if n.Name == name {
			return i
		}
	}
	t.Fatalf("no node %s in the lab", name)
	return -1
}

// cut is how long cutUnderlay keeps the node cut off once the rollout is
// unpaused.
const cut = 10 * time.Second

// cutUnderlay cuts the underlay of the last node (by name) not yet told to
// Switch, once every node applied Prepare and the operator counts them all
// healthy, with the rollout paused: a gate can only hold on a failure a
// probe has seen, and two or three fast nodes switch in less time than the
// cut takes to land. Once the operator counts the node unhealthy the
// rollout is unpaused, and after cut the link is restored. No node may be
// told to Switch while the cut lasts.
func cutUnderlay(t *testing.T, h *harness, f fault) string {
	t.Helper()
	c, err := h.l.Client()
	if err != nil {
		t.Fatal(err)
	}
	all := int32(len(h.l.Nodes))
	healthy := func(want func(n int32) bool) func() bool {
		return func() bool {
			var rm v1alpha1.RoutingMode
			err := c.Get(context.Background(), client.ObjectKey{Name: "default"}, &rm)
			return err == nil && want(rm.Status.Nodes.Healthy)
		}
	}
	// A node whose Prepare probes are not in yet counts as not healthy
	// too, and would pass for the cut seen.
	waitFor(t, time.Minute, "the operator to count every node healthy", healthy(func(n int32) bool { return n == all }))
	if err := h.l.SetUnderlay(f.node, false); err != nil {
		t.Fatal(err)
	}
	restore := sync.OnceFunc(func() {
		if err := h.l.SetUnderlay(f.node, true); err != nil {
			t.Error(err)
		}
	})
	defer restore()
	seen := waitFor(t, time.Minute, "the operator to count a node unhealthy", healthy(func(n int32) bool { return n < all }))
	if out, err := h.l.Apply(f.sample); err != nil {
		t.Fatalf("unpausing: %v\n%s", err, out)
	}
	// The fault's own length, not a wait for something to happen.
	time.Sleep(cut)
	during := f.watch.Snapshot()
	restore()
	for name, steps := range during {
		if slices.Contains(steps, v1alpha1.StepSwitch) {
			t.Errorf("%s was told to Switch while %s was cut off (steps %v); want the rollout held until the link is back", name, f.node, steps)
		}
	}
	return fmt.Sprintf("%s cut off; the operator counted it unhealthy %s into the cut, then the rollout was unpaused for %s of it",
		f.node, seen.Round(100*time.Millisecond), cut)
}

// lossPercent is the random loss randomLoss injects.
const lossPercent = 5

// randomLoss drops lossPercent of the frames crossing the underlay bridge,
// at random, from before the apply until the row's check reads what it
// dropped and removes it.
func randomLoss(t *testing.T, h *harness, _ fault) string {
	t.Helper()
	if err := h.l.StartRandomLoss(lossPercent); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.l.StopRandomLoss() })
	return fmt.Sprintf("%d%% of the frames crossing the underlay dropped at random", lossPercent)
}

// lossWithinInjected reads and removes the random loss, and fails unless
// every probe lost is one it can account for: a probe crosses the bridge
// twice, so about 1-0.95² = 9.75% of them are lost, never more than the
// frames the rule dropped nor more than 5σ above that share. TCP rides it
// out; Service requests whose retransmissions took longer than the
// client's timeout are reported, not counted.
func lossWithinInjected(t *testing.T, h *harness, name, _ string, r lab.TrafficReport) {
	t.Helper()
	dropped, err := h.l.RandomLossDropped()
	if err != nil {
		t.Error(err)
	}
	if err := h.l.StopRandomLoss(); err != nil {
		t.Error(err)
	}
	h.trafficRan(t, name, r)
	p := 1 - math.Pow(1-lossPercent/100.0, 2)
	bound := float64(r.UDP.Sent)*p + 5*math.Sqrt(float64(r.UDP.Sent)*p*(1-p))
	t.Logf("%s: %d of %d probes lost (%.2f%%; injected ≈ %.2f%%), %d frames dropped by the rule", name,
		r.UDP.Lost, r.UDP.Sent, 100*float64(r.UDP.Lost)/float64(max(r.UDP.Sent, 1)), 100*p, dropped)
	if r.UDP.Lost > dropped || float64(r.UDP.Lost) > bound {
		t.Errorf("%s: %d of %d probes lost with %d frames dropped; want at most the dropped frames and %.0f (%.2f%% + 5σ)",
			name, r.UDP.Lost, r.UDP.Sent, dropped, bound, 100*p)
	}
	if r.TCP.Resets != 0 || r.TCP.Errors != 0 {
		t.Errorf("%s: TCP %s; want no reset or error (TCP retransmits what the rule drops)", name, r.TCP)
	}
	h.checkService(t, name, r.Service, "the injected loss")
}

// lossOnNodeOnly is a check for faults of one node: probes may be lost
// only on paths to or from it, TCP rides the fault out, and Service
// requests to or from it may fail while, as reason says, it is down.
func lossOnNodeOnly(reason string) func(t *testing.T, h *harness, name, node string, r lab.TrafficReport) {
	return func(t *testing.T, h *harness, name, node string, r lab.TrafficReport) {
		t.Helper()
		h.trafficRan(t, name, r)
		outside := h.l.LostOutside(r, node)
		t.Logf("%s: %d of %d probes lost on paths through %s, %d elsewhere", name, r.UDP.Lost-outside, r.UDP.Sent, node, outside)
		if outside != 0 {
			t.Errorf("%s: %d probes lost between the nodes other than %s; want none. By pair:\n%s", name, outside, node, r.Troubled())
		}
		if r.TCP.Resets != 0 || r.TCP.Errors != 0 {
			t.Errorf("%s: TCP %s; want no reset or error (TCP retransmits across the fault)", name, r.TCP)
		}
		h.checkService(t, name, r.Service, fmt.Sprintf("requests to or from %s fail while %s", node, reason))
	}
}

// membership is the rows that take a node out of the cluster while the
// first batch switches, and bring it back while the first batch of the
// switch back switches. The node is the last by name: never the first to
// switch (the operator switches nodes in name order), nor the Service
// client's (on the first node).
type membership struct {
	node string
}

// elsewhere selects the pods the traffic runs between: those off the
// node, which must lose nothing.
func (m *membership) elsewhere(p lab.PodState) bool { return p.Node != m.node }

// remove switches the node off and deletes its Node (lab.RemoveRealNode),
// then releases the agents held.
func (m *membership) remove(t *testing.T, h *harness, f fault) string {
	t.Helper()
	if f.node == m.node {
		t.Fatalf("%s, the node to remove, is the first to switch", m.node)
	}
	h.removed = m.node
	if err := h.l.RemoveRealNode(context.Background(), m.node); err != nil {
		t.Fatal(err)
	}
	f.release()
	return m.node + " switched off and its Node deleted"
}

// serviceMayFail checks the traffic, the Service requests its backend got
// until its pod is deleted excepted.
func (m *membership) serviceMayFail(t *testing.T, h *harness, name, _ string, r lab.TrafficReport) {
	t.Helper()
	h.checkTraffic(t, name, r, "requests to the backend on "+m.node+" fail until its pod, bound to a Node that is gone, is deleted")
}

// removed checks the rollout completed on the other nodes, the node's
// RoutingNode is gone and their kernels route its pods no more, then waits
// until its pods are deleted (kube-controller-manager's pod garbage
// collector) and their replacements run, so the next row starts from a
// cluster without it.
func (m *membership) removed(t *testing.T, h *harness, steps map[string][]v1alpha1.RolloutStep) {
	t.Helper()
	ctx := context.Background()
	c, err := h.l.Client()
	if err != nil {
		t.Fatal(err)
	}
	waitComplete(ctx, t, h.l, c, v1alpha1.ActualRoutingNative, "bpf", len(h.l.Nodes)-1)
	var rn v1alpha1.RoutingNode
	if err := c.Get(ctx, client.ObjectKey{Name: m.node}, &rn); !apierrors.IsNotFound(err) {
		t.Errorf("%s's RoutingNode: %v; want it deleted", m.node, err)
	}
	delete(steps, m.node)
	if err := lab.SwitchedOnce(steps, len(h.l.Nodes)-1); err != nil {
		t.Error(err)
	}
	gone := h.l.Nodes[h.nodeIndex(t, m.node)]
	for _, n := range h.l.Nodes {
		if n.Name == m.node {
			continue
		}
		out, err := run("ip", "-n", n.NS, "route", "show", gone.PodCIDR.String())
		if err != nil {
			t.Fatal(err)
		}
		if strings.TrimSpace(out) != "" {
			t.Errorf("%s still routes the removed node's pods: %s", n.Name, out)
		}
	}
	took := waitFor(t, 3*time.Minute, "the pods bound to "+m.node+" deleted", func() bool {
		out, err := h.l.Kubectl("get", "pods", "-A", "--field-selector", "spec.nodeName="+m.node, "-o", "name")
		return err == nil && strings.TrimSpace(out) == ""
	})
	t.Logf("the pods bound to %s deleted %s after the rollout", m.node, took.Round(time.Second))
	h.kubectl(t, "rollout", "status", "deployment/"+lab.EchoDeployment, "--timeout=3m")
	h.checkWired(t, true, time.Minute)
}

// add brings the node back (lab.AddRealNode) while the first node switches
// back and the others are held, so that they still send natively when it
// joins; once the operator gave it its first datapath, which must receive
// both ways, the agents are released.
func (m *membership) add(t *testing.T, h *harness, f fault) string {
	t.Helper()
	start := time.Now()
	if err := h.l.AddRealNode(context.Background(), m.node); err != nil {
		t.Fatal(err)
	}
	h.removed = ""
	registered := time.Since(start)
	joined, err := f.watch.Joined(m.node, 2*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	f.release()
	if err := joined.ReceivesBothWays(m.node); err != nil {
		t.Error(err)
	}
	return fmt.Sprintf("%s registered again %s after its processes started, with podCIDR %s; given its first datapath %s after they started, while %s sent natively",
		m.node, registered.Round(100*time.Millisecond), h.l.Nodes[h.nodeIndex(t, m.node)].PodCIDR, time.Since(start).Round(100*time.Millisecond), strings.Join(joined.NativePeers, ", "))
}

// added checks the rollout completed on every node, the node included,
// the others told to Switch once; once the node runs its lab pod again,
// every node is wired as the API server's pods say and every pair of pods,
// its own included, exchanges traffic with nothing lost.
func (m *membership) added(t *testing.T, h *harness, steps map[string][]v1alpha1.RolloutStep) {
	t.Helper()
	ctx := context.Background()
	c, err := h.l.Client()
	if err != nil {
		t.Fatal(err)
	}
	waitComplete(ctx, t, h.l, c, v1alpha1.ActualRoutingTunnel, "legacy", len(h.l.Nodes))
	t.Logf("steps given: %v", steps)
	delete(steps, m.node)
	if err := lab.SwitchedOnce(steps, len(h.l.Nodes)-1); err != nil {
		t.Error(err)
	}
	if err := h.l.RefreshPods(ctx); err != nil {
		t.Fatal(err)
	}
	h.checkWired(t, false, time.Minute)
	r, _ := h.underTraffic(t, func() error { return nil })
	h.checkTraffic(t, "every pair, "+m.node+"'s pod included, after it joined", r, "")
}
