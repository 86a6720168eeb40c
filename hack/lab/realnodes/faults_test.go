package realnodes

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/routemode/routemode/agent/datapath"
	"github.com/routemode/routemode/agent/health"
	"github.com/routemode/routemode/api/v1alpha1"
	"github.com/routemode/routemode/hack/lab"
)

// testFaults runs the chaos rows that real nodes answer with their own
// supervision (hack/lab runs them with the lab's supervisor standing in
// for the kubelet): the agent's or the leading operator's container
// SIGKILLed while the first node switches, and restarted by its kubelet,
// and the API server or etcd frozen then, with every kubelet, agent and
// operator cut off from the cluster's state. The datapath keeps
// forwarding, no node is skipped or told to Switch twice, the rollout
// completes, and nothing is lost, reset or failed. Then the RoutingMode
// is edited back, or deleted and applied again, while the first node
// switches: the rollout turns round, or stops where it is and starts again
// from there, and completes in the mode last applied, losing nothing.
//
// Two fast nodes finish a rollout in a second or two, sooner than an edit
// or a deletion can land once the first node is told to Switch: for those,
// once every node has applied Prepare, every agent is held (SIGSTOP; the
// datapath lives in the kernel and forwards on) until the edit or deletion
// is in, so a node told to Switch cannot apply it before.
func testFaults(t *testing.T, h *harness) {
	for _, row := range []struct {
		fault, sample string
		routing       v1alpha1.ActualRouting
		host          string
		// inject puts the fault in place once the first node (node) is
		// told to Switch and returns what to report; an edit or deletion
		// calls release once it is in.
		inject func(t *testing.T, h *harness, node string, release func()) string
		// edited: inject edits or deletes the RoutingMode, so nodes switch
		// twice.
		edited bool
	}{
		{"the switching node's agent SIGKILLed (VXLAN → native + eBPF host routing)", "native-routing.yaml",
			v1alpha1.ActualRoutingNative, "bpf", killAgent, false},
		{fmt.Sprintf("kube-apiserver frozen %s (native + eBPF host routing → VXLAN)", freeze), "tunnel.yaml",
			v1alpha1.ActualRoutingTunnel, "legacy", freezing("kube-apiserver"), false},
		{"the leading operator SIGKILLed (VXLAN → native + eBPF host routing)", "native-routing.yaml",
			v1alpha1.ActualRoutingNative, "bpf", killOperator, false},
		{fmt.Sprintf("etcd frozen %s (native + eBPF host routing → VXLAN)", freeze), "tunnel.yaml",
			v1alpha1.ActualRoutingTunnel, "legacy", freezing("etcd"), false},
		{"the RoutingMode edited back to VXLAN (VXLAN → native + eBPF host routing → VXLAN)", "native-routing.yaml",
			v1alpha1.ActualRoutingTunnel, "legacy", editTo("tunnel.yaml"), true},
		// Back to where the next phase starts.
		{"the RoutingMode deleted, then VXLAN applied again (VXLAN → native + eBPF host routing → VXLAN)", "native-routing.yaml",
			v1alpha1.ActualRoutingTunnel, "legacy", deleteThenApply("tunnel.yaml"), true},
	} {
		ctx, cancel := context.WithCancel(context.Background())
		c, err := h.l.Client()
		if err != nil {
			t.Fatal(err)
		}
		w, err := h.l.WatchPoints(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var node, note string
		r, took := h.underTraffic(t, func() error {
			var hold func() func()
			if row.edited {
				hold = agentHold(t, h)
			}
			if _, err := h.l.Apply(h.sample(row.sample)); err != nil {
				return err
			}
			release := func() {}
			if hold != nil {
				if _, err := w.WaitFor(lab.AfterPrepare, len(h.l.Nodes), 2*time.Minute); err != nil {
					return err
				}
				release = hold()
				defer release()
			}
			if node, err = w.WaitFor(lab.FirstSwitching, len(h.l.Nodes), 2*time.Minute); err != nil {
				return err
			}
			note = row.inject(t, h, node, release)
			_, err := h.l.WaitRollout(ctx, c, 5*time.Minute, nil)
			return err
		})
		steps := w.Steps()
		cancel()
		t.Logf("%s at %q (%s): rollout done %s after the apply; %s", row.fault, lab.FirstSwitching, node, took.Round(100*time.Millisecond), note)
		waitComplete(context.Background(), t, h.l, c, row.routing, row.host)
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
		h.checkTraffic(t, row.fault, r, "")
		h.checkWired(t, row.host == "bpf", time.Minute)
	}
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
// container's ID), and waits until its kubelet restarted it and it is
// ready again; it returns the restarted component and how long that took.
func killContainer(t *testing.T, h *harness, selector string, c component) (component, time.Duration) {
	t.Helper()
	start := time.Now()
	signalProcess(t, "the container "+c.containerID+" of pod "+c.pod, syscall.SIGKILL, containerMain(c.containerID))
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

// killAgent SIGKILLs node's agent; once the kubelet restarted it, the new
// agent's log must say it adopted the kernel state, changing nothing when
// the killed agent had already applied the generation it found.
func killAgent(t *testing.T, h *harness, node string, _ func()) string {
	t.Helper()
	var rn v1alpha1.RoutingNode
	c, err := h.l.Client()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Get(context.Background(), client.ObjectKey{Name: node}, &rn); err != nil {
		t.Fatal(err)
	}
	var had int64
	if meta.IsStatusConditionTrue(rn.Status.Conditions, v1alpha1.ConditionDatapathApplied) {
		had = rn.Status.ObservedGeneration
	}
	var agent component
	for _, x := range components(t, h, agentSelector) {
		if x.node == node {
			agent = x
		}
	}
	if agent.containerID == "" {
		t.Fatalf("no running agent on %s", node)
	}
	restarted, back := killContainer(t, h, agentSelector, agent)
	// The kubelet keeps each run of a container in <restart count>.log.
	i := h.nodeIndex(t, node)
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
	t.Logf("%s's restarted agent: %s", node, a.Describe(had))
	// The health endpoint's namespace is bind-mounted in the agent's own
	// container (its /var/run/netns is HostToContainer; Bidirectional
	// would need a privileged container), so it dies with the container
	// and the restarted agent wires a new one, as Cilium's agent recreates
	// cilium-health's endpoint at every start. Any other change at a
	// generation already applied is one the kernel did not need.
	healthIP := datapath.RouterIP(h.l.Nodes[i].PodCIDR).Next()
	a.Changes = slices.DeleteFunc(a.Changes, func(c string) bool {
		return strings.Contains(c, health.DefaultNSName(node)) || strings.Contains(c, health.LXCName) || c == "endpoint map: write "+healthIP.String()
	})
	note, err := a.Versus(had)
	if err != nil {
		t.Errorf("%s: %v", node, err)
	}
	return fmt.Sprintf("agent restarted by the kubelet in %s; %s", back.Round(100*time.Millisecond), note)
}

// killOperator SIGKILLs the operator replica holding the leader lease;
// the other replica takes the lease over once it expires, and the kubelet
// restarts the killed one.
func killOperator(t *testing.T, h *harness, _ string, _ func()) string {
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
	_, back := killContainer(t, h, operatorSelector, leaders[0])
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
// errors and timeouts.
func freezing(name string) func(t *testing.T, h *harness, _ string, _ func()) string {
	return func(t *testing.T, h *harness, _ string, _ func()) string {
		t.Helper()
		resume, err := h.l.Suspend(name)
		if resume != nil {
			defer resume()
		}
		if err != nil {
			t.Fatal(err)
		}
		// The fault's own length, not a wait for something to happen.
		time.Sleep(freeze)
		return fmt.Sprintf("%s frozen %s", name, freeze)
	}
}

// editTo is a fault that applies sample over the RoutingMode being rolled
// out, as a user changing their mind mid-rollout would, and releases the
// agents once the operator has seen it.
func editTo(sample string) func(t *testing.T, h *harness, _ string, release func()) string {
	return func(t *testing.T, h *harness, _ string, release func()) string {
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
		release()
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
func deleteThenApply(sample string) func(t *testing.T, h *harness, _ string, release func()) string {
	return func(t *testing.T, h *harness, _ string, release func()) string {
		t.Helper()
		out, err := h.l.Kubectl("delete", "routingmode", "default")
		release()
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
