// Package realnodes holds the end-to-end test on the lab's real nodes
// (containerd, kubelet and kube-proxy per node): routemode installed as
// users install it, real pods, a ClusterIP Service through kube-proxy. It
// needs `make node-bin` (the Makefile's test target builds it) and fails
// saying so when bin/node is missing; it builds the binaries and images
// it installs itself, from the tree it tests.
package realnodes

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/routemode/routemode/hack/lab"
	"github.com/routemode/routemode/internal/images"
	"github.com/routemode/routemode/internal/testenv"
)

// nodes is how many real nodes the lab runs: a client node and backends
// spread over the others; three, so that a fault of one node leaves a
// pair of others whose traffic must not notice it.
const nodes = 3

// rate is the probes per second of the UDP streams between the lab's pods.
const rate = 400

// TestRealNodes installs routemode the way the README tells users, on real
// nodes, and then, on that one lab, in order: the live switch both ways
// under traffic (switch), the chaos matrix's faults during a switch
// (faults), pod churn during a switch (churn), the agent
// DaemonSet rolled to a new image (agentRoll), and the uninstall
// (uninstall). The lab is removed at the end, leaving nothing on the host.
func TestRealNodes(t *testing.T) {
	// The lab's clients log nothing worth reading here; without a logger
	// controller-runtime prints a stack trace saying so.
	ctrllog.SetLogger(logr.Discard())
	if os.Geteuid() != 0 {
		t.Fatal("the real nodes need network, mount and UTS namespaces and cgroups: run as root (make test)")
	}
	root, err := testenv.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	bin, imgs := filepath.Join(dir, "bin"), filepath.Join(dir, "images")
	goCmd(t, root, "build", "-o", bin+"/", "./cmd/...")
	goCmd(t, root, "run", "./hack/images", "build", "-dir", imgs)
	id := make([]byte, 2)
	_, _ = rand.Read(id)
	prefix := "rmr" + hex.EncodeToString(id) + "-"
	cfg := lab.Config{Dir: filepath.Join(dir, "lab"), Nodes: nodes, Prefix: prefix, Bin: bin, Root: root,
		K8sBin: filepath.Join(root, "bin", "k8s"), NodeBin: filepath.Join(root, "bin", "node"), RealNodes: true,
		Images: []string{filepath.Join(imgs, images.Operator.Repository+".tar"), filepath.Join(imgs, images.Agent.Repository+".tar"),
			filepath.Join(imgs, lab.EchoArchive)}}
	ctx := context.Background()
	start := time.Now()
	l, err := lab.Up(ctx, cfg)
	if err != nil {
		// The lab saved its logs next to its directory, which the test's
		// own cleanup removes: show how each ended.
		logs, _ := filepath.Glob(cfg.Dir + "-failed-logs/*.log")
		for _, f := range logs {
			out, _ := exec.Command("tail", "-n", "15", f).Output()
			t.Logf("%s:\n%s", filepath.Base(f), out)
		}
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := lab.Down(cfg.Dir); err != nil {
			t.Error(err)
		}
		for _, n := range l.Nodes {
			if _, err := os.Stat(filepath.Join("/var/run/netns", n.NS)); err == nil {
				t.Errorf("namespace %s left behind", n.NS)
			}
		}
		if out, _ := exec.Command("sh", "-c", "ls -d /sys/fs/cgroup/*/*/*/routemode-lab-"+prefix+"* /sys/fs/cgroup/*/routemode-lab-"+prefix+"* 2>/dev/null").Output(); len(out) > 0 {
			t.Errorf("cgroups left behind: %s", out)
		}
	})
	t.Logf("nodes, containerd, kubelets and images up in %s", time.Since(start).Round(time.Second))
	if err := l.Bootstrap(ctx, filepath.Join(root, "config", "samples", "tunnel.yaml")); err != nil {
		out, _ := l.Kubectl("get", "pods", "-A", "-o", "wide")
		t.Fatalf("%v\n%s", err, out)
	}
	t.Logf("routemode installed and the tunnel RoutingMode Complete %s after start", time.Since(start).Round(time.Second))
	h := &harness{l: l, root: root, dir: dir, agentArchive: cfg.Images[1]}
	for _, phase := range []struct {
		name string
		run  func(*testing.T, *harness)
	}{
		{"switch", testSwitch},
		{"faults", testFaults},
		{"churn", testChurn},
		{"agentRoll", testAgentRoll},
		{"uninstall", testUninstall},
		{"helm", testHelm},
	} {
		phaseStart := time.Now()
		ok := t.Run(phase.name, func(t *testing.T) { phase.run(t, h) })
		t.Logf("%s took %s", phase.name, time.Since(phaseStart).Round(time.Second))
		if !ok {
			// Each phase starts from the state the one before leaves.
			out, _ := l.Kubectl("get", "pods", "-A", "-o", "wide")
			t.Fatalf("phase %s failed; the later ones were not run. Pods:\n%s", phase.name, out)
		}
	}
}

// goCmd runs the go command in the repository, as make would.
func goCmd(t *testing.T, root string, args ...string) {
	t.Helper()
	cmd := exec.Command("go", args...)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// testSwitch is the demo's switch VXLAN -> native+bpf -> VXLAN under UDP
// probe streams and TCP connections between real pods (a DaemonSet, wired
// by routemode-cni through containerd) on different nodes, and requests to
// the echo Service's ClusterIP from a client pod on a node without
// backends: 0 lost, 0 resets, 0 failed requests.
func testSwitch(t *testing.T, h *harness) {
	out, err := h.l.Kubectl("get", "pods", "-A", "-o", "wide")
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range h.l.Nodes {
		if !strings.Contains(out, n.Name) {
			t.Errorf("no pod on node %s:\n%s", n.Name, out)
		}
	}
	var log strings.Builder
	d := &lab.Demo{Lab: h.l, Out: &log, Rate: rate, Window: 2 * time.Second}
	results, err := d.Run(context.Background())
	t.Log("\n" + log.String())
	if err != nil {
		t.Fatal(err)
	}
	backends := h.echoPods(t)
	for _, r := range results {
		h.checkTraffic(t, r.Name, r.Traffic, "")
		for _, b := range backends {
			if r.Traffic.Service != nil && r.Traffic.Service.Backends[b.Name] == 0 {
				t.Errorf("%s: backend %s answered no request: %s", r.Name, b.Name, r.Traffic.Service.Window)
			}
		}
	}
}

// checkTraffic fails unless traffic ran and none of it was lost or reset,
// and, unless serviceMayFail says why they may, no Service request
// failed; failed requests are always reported.
func (h *harness) checkTraffic(t *testing.T, name string, r lab.TrafficReport, serviceMayFail string) {
	t.Helper()
	h.trafficRan(t, name, r)
	if r.UDP.Lost != 0 || r.TCP.Resets != 0 || r.TCP.Errors != 0 {
		t.Errorf("%s: lost %d of %d probes, %d TCP resets, %d TCP errors; by pair:\n%s\nthe lab's logs within 1s of the lost probes:\n%s",
			name, r.UDP.Lost, r.UDP.Sent, r.TCP.Resets, r.TCP.Errors, r.Troubled(), h.l.LogsAround(r.UDP.LostSent, time.Second, 80))
	}
	h.checkService(t, name, r.Service, serviceMayFail)
}

// trafficRan logs the traffic's report and fails unless every kind of it
// ran.
func (h *harness) trafficRan(t *testing.T, name string, r lab.TrafficReport) {
	t.Helper()
	s := r.Service
	if s == nil {
		t.Fatalf("%s: no Service traffic ran", name)
	}
	t.Logf("%s: UDP %s; TCP %s; Service %s; the Service workload's threads waited %s for a CPU", name, r.UDP, r.TCP, s.Window, s.CPUWait.Round(time.Millisecond))
	if s.Err != nil {
		t.Error(s.Err)
	}
	if r.UDP.Sent == 0 || r.TCP.Messages == 0 || s.OK == 0 {
		t.Errorf("%s: no traffic ran (%d probes, %d TCP messages, %d Service answers)", name, r.UDP.Sent, r.TCP.Messages, s.OK)
	}
}

// checkService fails if a Service request failed, unless mayFail says why
// they may; failed requests are always reported, with what the lab logged
// around them.
func (h *harness) checkService(t *testing.T, name string, s *lab.ServiceReport, mayFail string) {
	t.Helper()
	if s.Failed == 0 {
		return
	}
	// The window's String, logged with the traffic, has each failure's
	// start; what the lab's components and pods logged then is what
	// explains it.
	around := h.l.LogsAround(s.FailureTimes(), time.Second, 120)
	if mayFail == "" {
		t.Errorf("%s: %d of %d Service requests failed; the lab's logs within 1s of their starts:\n%s", name, s.Failed, s.Sent, around)
		return
	}
	t.Logf("%s: %d of %d Service requests failed, not counted as a failure: %s; the lab's logs within 1s of their starts:\n%s", name, s.Failed, s.Sent, mayFail, around)
}
