package realnodes

import (
	"context"
	"errors"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/routemode/routemode/hack/lab"
)

// testChurn switches VXLAN -> native+bpf while the echo Deployment is
// scaled up, one backend's sandbox is killed and the Deployment is scaled
// down, then scales it up again with eBPF host routing on. Every new pod
// must answer from every node within seconds; every node must hold
// exactly the wiring (pod route, lxc device, address, eBPF endpoint entry)
// of the pods the API server has on it, nothing of the deleted ones; and
// the traffic between the lab's pods goes on without a loss or reset. The
// Service requests are counted but may fail: the killed backend takes
// connections until kube-proxy drops it.
func testChurn(t *testing.T, h *harness) {
	ctx := context.Background()
	c, err := h.l.Client()
	if err != nil {
		t.Fatal(err)
	}
	before := h.echoPods(t)
	replicas := len(before)
	tr, err := h.l.StartTraffic(ctx, rate, 8472)
	if err != nil {
		t.Fatal(err)
	}
	var report *lab.TrafficReport
	defer func() {
		if report == nil {
			tr.Stop()
		}
	}()

	h.kubectl(t, "apply", "-f", h.sample("native-routing.yaml"))
	switchStart := time.Now()
	var rolledOut atomic.Bool
	done := make(chan error, 1)
	go func() {
		_, err := h.l.WaitRollout(ctx, c, 5*time.Minute, nil)
		rolledOut.Store(true)
		done <- err
	}()
	when := func() string {
		if rolledOut.Load() {
			return "after the rollout"
		}
		return "during the rollout"
	}

	h.kubectl(t, "scale", "deployment/"+lab.EchoDeployment, "--replicas", strconv.Itoa(replicas+2))
	victim := before[0]
	killSandbox(t, victim)
	t.Logf("+%.1fs scaled %s to %d and killed pod %s's sandbox, %s", time.Since(switchStart).Seconds(), lab.EchoDeployment, replicas+2, victim.Name, when())
	h.kubectl(t, "rollout", "status", "deployment/"+lab.EchoDeployment, "--timeout=3m")
	for _, p := range h.echoPods(t) {
		if slices.ContainsFunc(before, func(b lab.PodState) bool { return b.Name == p.Name }) {
			continue
		}
		d := h.reachable(t, p, 20*time.Second)
		t.Logf("+%.1fs new pod %s (%s on %s) Ready, and answered from every node %s later, %s",
			time.Since(switchStart).Seconds(), p.Name, p.IP, p.Node, d.Round(time.Millisecond), when())
	}
	// The API server reports the new sandbox's address a moment after
	// the old one is gone: wait for a Ready pod of that name in another
	// network namespace.
	var reborn lab.PodState
	d := waitFor(t, 2*time.Minute, "pod "+victim.Name+" in a new sandbox", func() bool {
		ready, _ := h.l.Kubectl("get", "pod", victim.Name, "-o", `jsonpath={.status.conditions[?(@.type=="Ready")].status}`)
		pods, err := h.l.PodsOf(ctx, "app="+lab.EchoDeployment)
		i := slices.IndexFunc(pods, func(p lab.PodState) bool { return p.Name == victim.Name })
		if err != nil || i < 0 || pods[i].NSPath == victim.NSPath || strings.TrimSpace(ready) != "True" {
			return false
		}
		reborn = pods[i]
		_, err = os.Stat(victim.NSPath)
		return errors.Is(err, os.ErrNotExist)
	})
	t.Logf("+%.1fs pod %s back in a new sandbox (%s, was %s) %s after the kill, answering from every node %s later, %s",
		time.Since(switchStart).Seconds(), victim.Name, reborn.IP, victim.IP, d.Round(time.Millisecond),
		h.reachable(t, reborn, 20*time.Second).Round(time.Millisecond), when())

	h.kubectl(t, "scale", "deployment/"+lab.EchoDeployment, "--replicas=1")
	t.Logf("+%.1fs scaled %s to 1, %s", time.Since(switchStart).Seconds(), lab.EchoDeployment, when())
	d = waitFor(t, 2*time.Minute, "the scaled-down pods to be deleted", func() bool {
		out, err := h.l.Kubectl("get", "pods", "-l", "app="+lab.EchoDeployment, "-o", "name")
		return err == nil && len(strings.Fields(out)) == 1
	})
	t.Logf("+%.1fs the scaled-down pods deleted, %s after the scale", time.Since(switchStart).Seconds(), d.Round(time.Millisecond))

	if err := <-done; err != nil {
		t.Fatal(err)
	}
	t.Logf("+%.1fs the RoutingMode Ready: native routing, eBPF host routing", time.Since(switchStart).Seconds())
	t.Logf("every node's wiring matched its pods %s later", h.checkWired(t, true, time.Minute).Round(time.Millisecond))

	// New pods with eBPF host routing on: in the endpoint map, reachable.
	left := h.echoPods(t)
	h.kubectl(t, "scale", "deployment/"+lab.EchoDeployment, "--replicas", strconv.Itoa(replicas))
	h.kubectl(t, "rollout", "status", "deployment/"+lab.EchoDeployment, "--timeout=3m")
	for _, p := range h.echoPods(t) {
		if !slices.ContainsFunc(left, func(b lab.PodState) bool { return b.Name == p.Name }) {
			t.Logf("new pod %s (%s on %s) with eBPF host routing on answered from every node %s after Ready",
				p.Name, p.IP, p.Node, h.reachable(t, p, 20*time.Second).Round(time.Millisecond))
		}
	}
	t.Logf("every node's wiring, eBPF endpoint map included, matched its pods %s later", h.checkWired(t, true, time.Minute).Round(time.Millisecond))
	r := tr.Stop()
	report = &r
	h.checkTraffic(t, "churn", r, "a killed backend takes connections until kube-proxy drops it")
}
