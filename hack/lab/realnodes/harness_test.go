package realnodes

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/routemode/routemode/agent/ipam"
	"github.com/routemode/routemode/agent/nsutil"
	"github.com/routemode/routemode/hack/lab"
)

// harness is the lab the phases share.
type harness struct {
	l    *lab.Lab
	root string
	// dir is the test's scratch directory.
	dir string
	// agentArchive is the agent's image archive the lab was installed
	// from.
	agentArchive string
	// removed is the node taken out of the cluster, if one is: it has no
	// pods to check.
	removed string
}

func (h *harness) sample(name string) string { return filepath.Join(h.root, "config", "samples", name) }

func (h *harness) kubectl(t *testing.T, args ...string) string {
	t.Helper()
	out, err := h.l.Kubectl(args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// echoPods are the echo Service's running backends.
func (h *harness) echoPods(t *testing.T) []lab.PodState {
	t.Helper()
	pods, err := h.l.PodsOf(context.Background(), "app="+lab.EchoDeployment)
	if err != nil {
		t.Fatal(err)
	}
	return pods
}

// reachable waits until an echo backend answers with its name from the
// lab's pod on every node and from every other node's own network
// namespace (its host stack: how kube-proxy's NodePorts, masqueraded to the
// node IP, host-network pods and the API server reach pods), and returns
// how long that took.
func (h *harness) reachable(t *testing.T, pod lab.PodState, limit time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	type source struct{ what, nsPath string }
	var from []source
	for _, p := range h.l.Pods() {
		from = append(from, source{"pod " + p.Name + " on " + p.Node, p.NSPath})
	}
	for _, n := range h.l.Nodes {
		if n.NS != pod.Node {
			from = append(from, source{"node " + n.Name, nsutil.NamedPath(n.NS)})
		}
	}
	for _, f := range from {
		var body []byte
		var err error
		for {
			body, err = lab.HTTPGetIn(context.Background(), f.nsPath, netip.AddrPortFrom(pod.IP, 8080), "/")
			if err == nil && strings.TrimSpace(string(body)) == pod.Name {
				break
			}
			if time.Since(start) > limit {
				t.Fatalf("pod %s (%s on %s) not reachable from %s within %s: %v %q", pod.Name, pod.IP, pod.Node, f.what, limit, err, body)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	return time.Since(start)
}

// wiring is what a node holds for its pods: the /32 routes routemode-cni
// made (and their lxc devices), the lxc devices, the address allocations
// and, with eBPF host routing, the endpoint map's entries. The agent's
// health endpoint (lxc_health) is left out.
type wiring struct {
	Routes map[netip.Addr]string
	LXC    []string
	IPAM   []netip.Addr
	BPF    []netip.Addr
}

func (h *harness) wiring(t *testing.T, i int, bpf bool) wiring {
	t.Helper()
	ns := h.l.Nodes[i].NS
	w := wiring{Routes: map[netip.Addr]string{}}
	out, err := run("ip", "-n", ns, "-4", "-o", "route", "show", "proto", "182")
	if err != nil {
		t.Fatal(err)
	}
	var health netip.Addr
	for line := range strings.SplitSeq(strings.TrimSpace(out), "\n") {
		f := strings.Fields(line)
		if len(f) < 3 || f[1] != "dev" {
			continue
		}
		ip, err := netip.ParseAddr(f[0])
		if err != nil {
			t.Fatalf("route %q: %v", line, err)
		}
		if f[2] == "lxc_health" {
			health = ip
			continue
		}
		w.Routes[ip] = f[2]
	}
	out, err = run("ip", "-n", ns, "-o", "link", "show")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(strings.TrimSpace(out), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		name, _, _ := strings.Cut(strings.TrimSuffix(f[1], ":"), "@")
		if strings.HasPrefix(name, "lxc") && name != "lxc_health" {
			w.LXC = append(w.LXC, name)
		}
	}
	alloc, err := ipam.New(filepath.Join(h.l.NodeRoot(i), "run", "routemode", "ipam"), h.l.Nodes[i].PodCIDR)
	if err != nil {
		t.Fatal(err)
	}
	allocs, err := alloc.Allocations()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range allocs {
		if a.IP != health {
			w.IPAM = append(w.IPAM, a.IP)
		}
	}
	if bpf {
		out, err := h.l.Routemodectl(context.Background(), i, "bpf", "endpoint", "list", "--node", ns)
		if err != nil {
			t.Fatal(err)
		}
		for line := range strings.SplitSeq(strings.TrimSpace(out), "\n") {
			addr, _, _ := strings.Cut(line, ":")
			if ip, err := netip.ParseAddr(addr); err == nil && ip != health {
				w.BPF = append(w.BPF, ip)
			}
		}
	}
	slices.Sort(w.LXC)
	slices.SortFunc(w.IPAM, netip.Addr.Compare)
	slices.SortFunc(w.BPF, netip.Addr.Compare)
	return w
}

func run(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// podAddrs are the addresses of the pods the API server has on every
// node, hostNetwork pods left out: terminating ones too, whose wiring goes
// with their sandbox.
func (h *harness) podAddrs(t *testing.T) map[string][]netip.Addr {
	t.Helper()
	var pods corev1.PodList
	if err := json.Unmarshal([]byte(h.kubectl(t, "get", "pods", "-A", "-o", "json")), &pods); err != nil {
		t.Fatal(err)
	}
	out := map[string][]netip.Addr{}
	for _, p := range pods.Items {
		if p.Spec.HostNetwork || p.Status.PodIP == "" {
			continue
		}
		ip, err := netip.ParseAddr(p.Status.PodIP)
		if err != nil {
			t.Fatal(err)
		}
		out[p.Spec.NodeName] = append(out[p.Spec.NodeName], ip)
	}
	for _, ips := range out {
		slices.SortFunc(ips, netip.Addr.Compare)
	}
	return out
}

// checkWired waits until every node holds exactly the wiring of the pods
// the API server has on it: nothing missing, nothing left of a pod that is
// gone. It returns how long that took.
func (h *harness) checkWired(t *testing.T, bpf bool, limit time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		var diffs []string
		want := h.podAddrs(t)
		for i, n := range h.l.Nodes {
			if n.Name == h.removed {
				continue
			}
			w := h.wiring(t, i, bpf)
			pods := want[n.Name]
			routes := slices.SortedFunc(maps.Keys(w.Routes), netip.Addr.Compare)
			devs := slices.Sorted(maps.Values(w.Routes))
			switch {
			case !slices.Equal(routes, pods):
				diffs = append(diffs, fmt.Sprintf("%s: pod routes to %v, pods %v", n.NS, routes, pods))
			case !slices.Equal(w.LXC, devs):
				diffs = append(diffs, fmt.Sprintf("%s: lxc devices %v, the pod routes' %v", n.NS, w.LXC, devs))
			case !slices.Equal(w.IPAM, pods):
				diffs = append(diffs, fmt.Sprintf("%s: addresses allocated %v, pods %v", n.NS, w.IPAM, pods))
			case bpf && !slices.Equal(w.BPF, pods):
				diffs = append(diffs, fmt.Sprintf("%s: eBPF endpoint map %v, pods %v", n.NS, w.BPF, pods))
			}
		}
		if len(diffs) == 0 {
			return time.Since(start)
		}
		if time.Since(start) > limit {
			t.Fatalf("after %s the nodes' pod wiring does not match the API server's pods:\n%s", limit, strings.Join(diffs, "\n"))
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// killSandbox SIGKILLs the pause process of pod's sandbox, as a crash
// would: the kubelet then stops the dead sandbox (containerd calls CNI
// DEL), garbage-collects it and starts the pod in a new one.
func killSandbox(t *testing.T, pod lab.PodState) {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(pod.NSPath, &st); err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("net:[%d]", st.Ino)
	signalProcess(t, "the pause process in pod "+pod.Name+"'s network namespace "+pod.NSPath, syscall.SIGKILL, func(pid int) bool {
		ns, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", pid))
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
		return ns == want && strings.TrimSpace(string(comm)) == "pause"
	})
}

// signalProcess sends sig (SIGKILL: the way a crash ends it) to the first
// process that match accepts; it fails the test when there is none.
func signalProcess(t *testing.T, what string, sig syscall.Signal, match func(pid int) bool) {
	t.Helper()
	if err := syscall.Kill(findProcess(t, what, match), sig); err != nil {
		t.Fatal(err)
	}
}

// findProcess returns the first process that match accepts; it fails the
// test when there is none.
func findProcess(t *testing.T, what string, match func(pid int) bool) int {
	t.Helper()
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		if pid, err := strconv.Atoi(e.Name()); err == nil && match(pid) {
			return pid
		}
	}
	t.Fatalf("no process found: %s", what)
	return 0
}

// waitFor polls ok every 200 ms until it holds, failing after limit.
func waitFor(t *testing.T, limit time.Duration, what string, ok func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !ok() {
		if time.Since(start) > limit {
			t.Fatalf("timed out after %s waiting for %s", limit, what)
		}
		time.Sleep(200 * time.Millisecond)
	}
	return time.Since(start)
}

// underTraffic runs action while the lab's traffic flows, and stops the
// traffic once 300 more probes were answered after it, so the report
// covers the datapath as the action left it too. It returns the report
// and how long action took.
func (h *harness) underTraffic(t *testing.T, action func() error) (lab.TrafficReport, time.Duration) {
	t.Helper()
	return h.underTrafficWith(t, lab.TrafficOptions{}, action)
}

// underTrafficWith is underTraffic with the traffic narrowed or relaxed
// as o says.
func (h *harness) underTrafficWith(t *testing.T, o lab.TrafficOptions, action func() error) (lab.TrafficReport, time.Duration) {
	t.Helper()
	ctx := context.Background()
	tr, err := h.l.StartTrafficWith(ctx, rate, 8472, o)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	err = action()
	took := time.Since(start)
	if err == nil {
		err = tr.Answered(ctx, 300, time.Minute)
	}
	r := tr.Stop()
	if err != nil {
		t.Fatal(err)
	}
	return r, took
}
