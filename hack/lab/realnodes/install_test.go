//go:build realnodes

// Package realnodes holds the end-to-end tests on the lab's real nodes
// (containerd, kubelet and kube-proxy per node). They need `make node-bin`
// and `make images` and take minutes, so they run with `make
// test-realnodes` (the realnodes build tag), not in `make test`.
package realnodes

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/routemode/routemode/hack/lab"
)

// TestInstallAndSwitch installs routemode the way the README tells users,
// on real nodes, brings a RoutingMode up, switches it VXLAN -> native+bpf
// -> VXLAN under the demo's UDP probe streams and TCP connections between
// real pods (a DaemonSet, wired by routemode-cni through containerd) on
// different nodes, and removes the lab leaving nothing on the host.
func TestInstallAndSwitch(t *testing.T) {
	ctx := context.Background()
	start := time.Now()
	l, root := upRealLab(t, false)
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
