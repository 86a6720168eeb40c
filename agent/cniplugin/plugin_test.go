package cniplugin_test

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/routemode/routemode/agent/cniplugin"
	"github.com/routemode/routemode/agent/endpoint"
	"github.com/routemode/routemode/agent/ipam"
	"github.com/routemode/routemode/agent/nlsafe"
	"github.com/routemode/routemode/internal/netlab"
)

// oneNode is a one-node lab whose agent wrote its CNI configuration.
func oneNode(t testing.TB) (*netlab.Lab, *netlab.Node) {
	t.Helper()
	l := netlab.New(t, netlab.Spec{Nodes: 1, CNI: true, Agents: true, RPFilter: 1})
	netlab.MustStep(t, netlab.Context(t, time.Minute), l.Nodes, netlab.Tunnel)
	return l, l.Nodes[0]
}

func cniError(t *testing.T, res netlab.CNIResult) types.Error {
	t.Helper()
	if res.ExitCode == 0 {
		t.Fatalf("plugin succeeded, want an error: %s", res.Stdout)
	}
	if strings.Contains(string(res.Stderr), "panic") || strings.Contains(string(res.Stdout), "panic") {
		t.Fatalf("plugin panicked: %s %s", res.Stdout, res.Stderr)
	}
	var e types.Error
	if err := json.Unmarshal(res.Stdout, &e); err != nil {
		t.Fatalf("error output is not a CNI error: %v: %q", err, res.Stdout)
	}
	if e.Code == 0 || e.Msg == "" {
		t.Fatalf("CNI error without code or message: %+v", e)
	}
	return e
}

func TestMalformedInput(t *testing.T) {
	_, n := oneNode(t)
	ctx := netlab.Context(t, time.Minute)
	good := netlab.MustPluginStdin(t, n)
	var conf map[string]any
	if err := json.Unmarshal(good, &conf); err != nil {
		t.Fatal(err)
	}
	mutate := func(f func(m map[string]any)) []byte {
		m := map[string]any{}
		for k, v := range conf {
			m[k] = v
		}
		f(m)
		b, _ := json.Marshal(m)
		return b
	}
	podNS := netlab.MustPodNS(t, n, "bad")
	cases := map[string]struct {
		stdin    []byte
		netns    string
		code     uint
		contains string
	}{
		"bad JSON":               {stdin: []byte(`{"cniVersion": "1.0.0", "name": `), code: types.ErrDecodingFailure, contains: "unexpected end of JSON input"},
		"empty stdin":            {stdin: nil, code: types.ErrDecodingFailure},
		"missing podCIDR":        {stdin: mutate(func(m map[string]any) { delete(m, "podCIDR") }), code: types.ErrInvalidNetworkConfig, contains: "podCIDR is missing"},
		"podCIDR not a CIDR":     {stdin: mutate(func(m map[string]any) { m["podCIDR"] = "10.0.0.0/33x" }), code: types.ErrInvalidNetworkConfig, contains: "is not a CIDR"},
		"routerIP outside":       {stdin: mutate(func(m map[string]any) { m["routerIP"] = "10.9.0.1" }), code: types.ErrInvalidNetworkConfig, contains: "outside podCIDR"},
		"routeMTU too large":     {stdin: mutate(func(m map[string]any) { m["routeMTU"] = 9000 }), code: types.ErrInvalidNetworkConfig, contains: "routeMTU"},
		"missing endpointDir":    {stdin: mutate(func(m map[string]any) { delete(m, "endpointDir") }), code: types.ErrInvalidNetworkConfig, contains: "endpointDir is missing"},
		"wrong type for MTU":     {stdin: mutate(func(m map[string]any) { m["deviceMTU"] = "big" }), code: types.ErrDecodingFailure, contains: "deviceMTU"},
		"netns does not exist":   {stdin: good, netns: "/var/run/netns/does-not-exist-" + n.NSName, code: types.ErrInvalidNetNS},
		"missing network name":   {stdin: mutate(func(m map[string]any) { delete(m, "name") }), code: types.ErrInvalidNetworkConfig, contains: "name"},
		"unsupported cniVersion": {stdin: mutate(func(m map[string]any) { m["cniVersion"] = "9.9.9" }), code: types.ErrIncompatibleCNIVersion},
		// A configuration the agent has not set the node up for: the file of
		// the node's previous life, after a reboot into another podCIDR.
		"another podCIDR": {stdin: mutate(func(m map[string]any) { m["podCIDR"], m["routerIP"] = "10.0.200.0/24", "10.0.200.1" }),
			code: types.ErrTryAgainLater, contains: "has not set this node up for podCIDR 10.0.200.0/24"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			netnsPath := filepath.Join("/var/run/netns", podNS)
			if tc.netns != "" {
				netnsPath = tc.netns
			}
			res := netlab.MustCNI(t, ctx, n, "ADD", "malformed", netnsPath, "eth0", tc.stdin)
			e := cniError(t, res)
			t.Logf("exit %d, code %d: %s (%s)", res.ExitCode, e.Code, e.Msg, e.Details)
			if e.Code != tc.code {
				t.Errorf("code %d (%s), want %d", e.Code, e.Msg, tc.code)
			}
			if !strings.Contains(e.Msg+" "+e.Details, tc.contains) {
				t.Errorf("message %q lacks %q", e.Msg+" "+e.Details, tc.contains)
			}
		})
	}
	// Missing environment: no CNI_NETNS for ADD.
	res := netlab.MustCNI(t, ctx, n, "ADD", "malformed", "", "eth0", good)
	if e := cniError(t, res); e.Code != types.ErrInvalidEnvironmentVariables {
		t.Errorf("missing CNI_NETNS: %+v", e)
	}
	// Nothing leaked: no address allocated, no endpoint recorded.
	alloc, err := ipam.New(filepath.Join(n.StateDir, "ipam"), n.PodCIDR)
	if err != nil {
		t.Fatal(err)
	}
	if ip, ok := alloc.Lookup("malformed", "eth0"); ok {
		t.Errorf("failed ADDs leaked address %s", ip)
	}
}

// TestVersion runs the binary the lab built (which also makes go test's
// cache see changes to the plugin package, imported here).
func TestVersion(t *testing.T) {
	_, n := oneNode(t)
	res := netlab.MustCNI(t, netlab.Context(t, time.Minute), n, "VERSION", "", "", "", []byte(`{"cniVersion":"1.0.0"}`))
	var got struct {
		Supported []string `json:"supportedVersions"`
	}
	if err := json.Unmarshal(res.Stdout, &got); res.ExitCode != 0 || err != nil {
		t.Fatalf("VERSION: exit %d: %v %s %s", res.ExitCode, err, res.Stdout, res.Stderr)
	}
	if want := cniplugin.Versions.SupportedVersions(); !slices.Equal(got.Supported, want) || !slices.Contains(want, "1.1.0") {
		t.Errorf("VERSION lists %v, want %v with 1.1.0", got.Supported, want)
	}
}

// TestAddCheckDel wires a pod, checks what ADD made, CHECKs it, breaks it
// for CHECK to notice, and deletes it twice.
func TestAddCheckDel(t *testing.T) {
	_, n := oneNode(t)
	ctx := netlab.Context(t, time.Minute)
	p := netlab.MustAddPod(t, ctx, n, "pod1")
	if !n.PodCIDR.Contains(p.IP) || p.IP == netip.MustParseAddr("10.0.0.1") || p.IP == netip.MustParseAddr("10.0.0.2") {
		t.Errorf("pod IP %s: want an address of %s other than the router and health IPs", p.IP, n.PodCIDR)
	}
	ep, ok, err := endpoint.Store{Dir: filepath.Join(n.StateDir, "endpoints")}.Get(p.ContainerID, "eth0")
	if err != nil || !ok {
		t.Fatalf("endpoint record: %v %v", ok, err)
	}
	lxc, err := n.Handle.LinkByName(ep.LXCName)
	if err != nil {
		t.Fatalf("lxc device %s: %v", ep.LXCName, err)
	}
	if !strings.HasPrefix(ep.LXCName, "lxc") || len(ep.LXCName) != 15 || ep.LXCIndex != lxc.Attrs().Index ||
		ep.LXCMAC != lxc.Attrs().HardwareAddr.String() || ep.IP != p.IP || ep.NetNS != p.Path() || ep.PodMAC == "" || ep.ID != endpoint.IDFor(p.IP) {
		t.Errorf("endpoint record %+v does not match the kernel (lxc index %d mac %s)", ep, lxc.Attrs().Index, lxc.Attrs().HardwareAddr)
	}
	t.Logf("endpoint: %+v", ep)

	route, err := run("ip", "-n", p.NSName, "route", "show", "default")
	if err != nil || !strings.Contains(route, "default via 10.0.0.1 dev eth0") || !strings.Contains(route, "mtu 1450") {
		t.Errorf("pod default route: %q %v", route, err)
	}
	link, _ := run("ip", "-n", p.NSName, "link", "show", "eth0")
	if !strings.Contains(link, "mtu 1500") {
		t.Errorf("pod eth0 must keep the full MTU: %s", link)
	}
	host, _ := netlab.IP(n, "route", "show", p.IP.String())
	if !strings.Contains(host, "dev "+ep.LXCName) || !strings.Contains(host, "proto 182") {
		t.Errorf("node route to the pod: %q", host)
	}
	if proxy, _ := run("ip", "netns", "exec", n.NSName, "cat", "/proc/sys/net/ipv4/conf/"+ep.LXCName+"/proxy_arp"); strings.TrimSpace(proxy) != "1" {
		t.Errorf("proxy_arp on %s = %q", ep.LXCName, proxy)
	}
	if _, err := p.Ping(ctx, netip.AddrPortFrom(netip.MustParseAddr("10.0.0.2"), 4240), 64, false); err != nil {
		t.Errorf("pod → own node's health endpoint: %v", err)
	}

	check := func() netlab.CNIResult {
		stdin := withPrevResult(t, netlab.MustPluginStdin(t, n), p.Result)
		return netlab.MustCNI(t, ctx, n, "CHECK", p.ContainerID, p.Path(), "eth0", stdin)
	}
	if res := check(); res.ExitCode != 0 {
		t.Errorf("CHECK of a healthy pod: %s %s", res.Stdout, res.Stderr)
	}
	if _, err := run("ip", "-n", p.NSName, "route", "del", "default"); err != nil {
		t.Fatal(err)
	}
	if res := check(); res.ExitCode == 0 {
		t.Errorf("CHECK passed a pod without default route")
	} else {
		t.Logf("CHECK of a broken pod: %s", strings.Join(strings.Fields(string(res.Stdout)), " "))
	}

	for i := range 2 {
		if res := netlab.MustCNI(t, ctx, n, "DEL", p.ContainerID, p.Path(), "eth0", netlab.MustPluginStdin(t, n)); res.ExitCode != 0 {
			t.Fatalf("DEL #%d: %s %s", i+1, res.Stdout, res.Stderr)
		}
	}
	if _, err := n.Handle.LinkByName(ep.LXCName); !nlsafe.IsNotFound(err) {
		t.Errorf("lxc device survived DEL: %v", err)
	}
	if _, ok, _ := (endpoint.Store{Dir: filepath.Join(n.StateDir, "endpoints")}).Get(p.ContainerID, "eth0"); ok {
		t.Errorf("endpoint record survived DEL")
	}
	// DEL of a pod that never existed, with a netns path that is gone.
	if res := netlab.MustCNI(t, ctx, n, "DEL", "never-existed", "/var/run/netns/gone-"+n.NSName, "eth0", netlab.MustPluginStdin(t, n)); res.ExitCode != 0 {
		t.Errorf("DEL of an unknown pod: %s %s", res.Stdout, res.Stderr)
	}
}

func withPrevResult(t *testing.T, stdin []byte, r *current.Result) []byte {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(stdin, &m); err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(r)
	var prev map[string]any
	_ = json.Unmarshal(b, &prev)
	m["prevResult"] = prev
	out, _ := json.Marshal(m)
	return out
}

// run runs a command and returns its combined output.
func run(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	return string(out), err
}

// TestConcurrentAdds runs many ADDs at once: every pod gets its own
// address, and DEL gives every address back.
func TestConcurrentAdds(t *testing.T) {
	_, n := oneNode(t)
	ctx := netlab.Context(t, 2*time.Minute)
	const pods = 16
	stdin := netlab.MustPluginStdin(t, n)
	type added struct {
		id, ns string
		ip     netip.Addr
		err    error
	}
	results := make([]added, pods)
	var wg sync.WaitGroup
	for i := range pods {
		nsName := netlab.MustPodNS(t, n, fmt.Sprintf("c%d", i))
		results[i].id, results[i].ns = fmt.Sprintf("concurrent-%d", i), nsName
		wg.Add(1)
		go func() {
			defer wg.Done()
			res := netlab.MustCNI(t, ctx, n, "ADD", results[i].id, filepath.Join("/var/run/netns", nsName), "eth0", stdin)
			if res.ExitCode != 0 {
				results[i].err = fmt.Errorf("exit %d: %s %s", res.ExitCode, res.Stdout, res.Stderr)
				return
			}
			var r current.Result
			if err := json.Unmarshal(res.Stdout, &r); err != nil || len(r.IPs) != 1 {
				results[i].err = fmt.Errorf("result %s: %v", res.Stdout, err)
				return
			}
			results[i].ip, _ = netip.AddrFromSlice(r.IPs[0].Address.IP.To4())
		}()
	}
	wg.Wait()
	seen := map[netip.Addr]string{}
	for _, r := range results {
		if r.err != nil {
			t.Fatalf("ADD %s: %v", r.id, r.err)
		}
		if other, dup := seen[r.ip]; dup {
			t.Errorf("%s and %s both got %s", other, r.id, r.ip)
		}
		seen[r.ip] = r.id
	}
	t.Logf("%d concurrent ADDs got %d distinct addresses", pods, len(seen))
	eps, err := (endpoint.Store{Dir: filepath.Join(n.StateDir, "endpoints")}).List()
	if err != nil || len(eps) != pods+1 { // + the health endpoint
		t.Errorf("endpoint records: %d (%v), want %d", len(eps), err, pods+1)
	}
	for _, r := range results {
		if res := netlab.MustCNI(t, ctx, n, "DEL", r.id, filepath.Join("/var/run/netns", r.ns), "eth0", stdin); res.ExitCode != 0 {
			t.Errorf("DEL %s: %s", r.id, res.Stdout)
		}
	}
	alloc, _ := ipam.New(filepath.Join(n.StateDir, "ipam"), n.PodCIDR)
	if used, _ := alloc.Allocations(); len(used) != 0 {
		t.Errorf("addresses still allocated after DEL: %v", used)
	}
	if entries, _ := os.ReadDir(filepath.Join(n.StateDir, "endpoints")); len(entries) != 1 {
		t.Errorf("endpoint directory after DEL holds %d entries, want the health endpoint only", len(entries))
	}
}
