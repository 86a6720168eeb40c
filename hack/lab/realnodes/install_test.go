//go:build realnodes

// Package realnodes holds the end-to-end tests on the lab's real nodes
// (containerd, kubelet and kube-proxy per node). They need `make node-bin`
// and `make images` and take minutes, so they run with `make
// test-realnodes` (the realnodes build tag), not in `make test`.
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
	"github.com/routemode/routemode/internal/testenv"
)

// TestInstallAndSwitch installs routemode the way the README tells users,
// on real nodes, brings a RoutingMode up, switches it VXLAN -> native+bpf
// -> VXLAN under the demo's UDP probe streams and TCP connections between
// real pods (a DaemonSet, wired by routemode-cni through containerd) on
// different nodes, and removes the lab leaving nothing on the host.
func TestInstallAndSwitch(t *testing.T) {
	// The lab's clients log nothing worth reading here; without a logger
	// controller-runtime prints a stack trace saying so.
	ctrllog.SetLogger(logr.Discard())
	if os.Geteuid() != 0 {
		t.Fatal("the real nodes need network, mount and UTS namespaces and cgroups: run as root")
	}
	root, err := testenv.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin")
	build := exec.Command("go", "build", "-o", bin+"/", "./cmd/...")
	build.Dir, build.Stdout, build.Stderr = root, os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		t.Fatal("building the binaries:", err)
	}
	id := make([]byte, 2)
	_, _ = rand.Read(id)
	prefix := "rmr" + hex.EncodeToString(id) + "-"
	cfg := lab.Config{Dir: filepath.Join(dir, "lab"), Nodes: 2, Prefix: prefix, Bin: bin, Root: root,
		K8sBin: filepath.Join(root, "bin", "k8s"), NodeBin: filepath.Join(root, "bin", "node"), RealNodes: true,
		Images: []string{filepath.Join(root, "bin", "images", "routemode-operator.tar"), filepath.Join(root, "bin", "images", "routemode-agent.tar")}}
	ctx := context.Background()
	start := time.Now()
	l, err := lab.Up(ctx, cfg)
	if err != nil {
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
	out, err := l.Kubectl("get", "pods", "-A", "-o", "wide")
	if err != nil {
		t.Fatal(err)
	}
	t.Log("\n" + out)
	for _, n := range l.Nodes {
		if !strings.Contains(out, n.Name) {
			t.Errorf("no pod on node %s", n.Name)
		}
	}
	var log strings.Builder
	d := &lab.Demo{Lab: l, Out: &log, Rate: 400, Window: 2 * time.Second}
	switchStart := time.Now()
	results, err := d.Run(ctx)
	t.Log("\n" + log.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("pods and both switches took %s", time.Since(switchStart).Round(time.Second))
	for _, r := range results {
		if r.Traffic.UDP.Sent == 0 || r.Traffic.TCP.Messages == 0 {
			t.Errorf("%s: no traffic ran (%d probes, %d TCP messages)", r.Name, r.Traffic.UDP.Sent, r.Traffic.TCP.Messages)
		}
		if r.Traffic.UDP.Lost != 0 || r.Traffic.TCP.Resets != 0 || r.Traffic.TCP.Errors != 0 {
			t.Errorf("%s: lost %d of %d probes, %d TCP resets, %d TCP errors", r.Name, r.Traffic.UDP.Lost, r.Traffic.UDP.Sent, r.Traffic.TCP.Resets, r.Traffic.TCP.Errors)
		}
	}
}
