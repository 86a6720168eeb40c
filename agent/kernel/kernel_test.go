package kernel

import (
	"net/netip"
	"os/exec"
	"testing"

	"github.com/routemode/routemode/agent/datapath"
	"github.com/routemode/routemode/agent/endpoint"
	"github.com/routemode/routemode/agent/nlsafe"
	"github.com/routemode/routemode/agent/nsutil"
	"github.com/routemode/routemode/internal/privileged"
)

// A pod deleted while the agent reads the kernel is the CNI DEL's to
// finish: its route, flushed as the kernel takes the device down, must not
// read as missing, which would fail the node's read-back (and roll it back
// mid-rollout). A route missing from a device that stays up is reported.
func TestReadPodRoutesWhileAPodIsDeleted(t *testing.T) {
	privileged.Require(t, "creates a network namespace")
	name, n, err := nsutil.CreateTemp("rmkernel")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := nsutil.Delete(name); err != nil {
			t.Error(err)
		}
	})
	path := n.Path()
	n.Close()
	h, err := nlsafe.NewHandleAtPath(path)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", append([]string{"-n", name}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
	const lxc = "lxc0"
	podIP := netip.MustParseAddr("10.0.0.9")
	ip("link", "add", lxc, "type", "veth", "peer", "name", "lxc0p")
	ip("link", "set", lxc, "up")
	ip("route", "replace", podIP.String()+"/32", "dev", lxc, "scope", "link", "proto", "182")
	l, err := h.LinkByName(lxc)
	if err != nil {
		t.Fatal(err)
	}
	ep := endpoint.Endpoint{ContainerID: "pod", IfName: "eth0", IP: podIP, LXCName: lxc, LXCIndex: l.Attrs().Index}
	k := &Kernel{H: h, StateDir: t.TempDir()}
	read := func() (datapath.PodRoute, bool) {
		t.Helper()
		st, err := k.Read(ReadRequest{Endpoints: []endpoint.Endpoint{ep}})
		if err != nil {
			t.Fatal(err)
		}
		r, ok := st.PodRoutes[EndpointKey(ep)]
		return r, ok
	}

	if r, ok := read(); !ok || r.Dev != lxc {
		t.Fatalf("a wired pod's route read as %+v (%v); want dev %s", r, ok, lxc)
	}
	ip("route", "del", podIP.String()+"/32")
	if r, ok := read(); !ok || r.Dev != "" {
		t.Fatalf("a route missing from a device that is up read as %+v (%v); want it reported missing", r, ok)
	}
	ip("route", "replace", podIP.String()+"/32", "dev", lxc, "scope", "link", "proto", "182")

	// The pod's CNI DEL deletes its device once the rest of the state is
	// read, as it did in a loaded e2e run.
	beforePodRoutes = func() { ip("link", "del", lxc) }
	t.Cleanup(func() { beforePodRoutes = nil })
	if r, ok := read(); ok {
		t.Errorf("a pod deleted during the read reported %+v; want it left to its CNI DEL", r)
	}
}
