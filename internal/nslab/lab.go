// Package nslab builds throwaway clusters out of network namespaces for
// tests that need real packets: N node namespaces joined by a bridge that
// lives in a namespace of its own (never in the caller's), pods created by
// running the real routemode CNI plugin binary inside a node's namespace,
// and one node agent (agent/node) per node, driven directly without an API
// server.
//
// Addresses follow the seed article: node-i is 192.168.0.(110+10i)/24 on
// its eth0 (node-1 .120, node-2 .130, node-3 .140) with podCIDR
// 10.0.(i-1).0/24 inside 10.0.0.0/16; the bridge holds 192.168.0.1, an
// "outside" address for masquerade tests. Node namespaces run with strict
// rp_filter (all=1, default=1), as many distributions do, so a datapath
// that needs loose reverse-path filtering shows it.
//
// Every namespace name starts with the lab's ID (rml<6 hex>), unique per
// run, so parallel or leftover runs never collide; t.Cleanup removes every
// namespace, and with them every device, also when the test fails.
package nslab

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/go-logr/logr"
	"github.com/go-logr/logr/testr"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/routemode/routemode/agent/nlsafe"
	"github.com/routemode/routemode/agent/node"
	"github.com/routemode/routemode/agent/nsutil"
	"github.com/routemode/routemode/api/v1alpha1"
	"github.com/routemode/routemode/internal/privileged"
)

// Addresses of the lab.
var (
	UnderlayPrefix = netip.MustParsePrefix("192.168.0.0/24")
	OutsideIP      = netip.MustParseAddr("192.168.0.1")
	PodPrefix      = netip.MustParsePrefix("10.0.0.0/16")
)

// NodeIP is the underlay address of node i (1-based).
func NodeIP(i int) netip.Addr { return netip.AddrFrom4([4]byte{192, 168, 0, byte(110 + 10*i)}) }

// PodCIDR is the podCIDR of node i (1-based).
func PodCIDR(i int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 0, byte(i - 1), 0}), 24)
}

// NeighQueue (for device dev) is set on the devices that carry the probe
// streams: each node's eth0, each pod's eth0 and its lxc device. UDP-only flows never confirm a neighbour, so the kernel re-probes
// it every half minute or so; on a test machine starved of CPU (parallel
// builds, load far above the core count) the ARP answer can be processed
// late, the entry goes through FAILED and is resolved again while the probe
// streams keep sending. The default queue for packets awaiting resolution
// (212992 bytes, some 140 ms of the lab's probe traffic) then overflows
// and the kernel discards them (unresolved_discards in
// /proc/net/stat/arp_cache), which has nothing to do with the datapath
// under test. A 4 MiB queue holds seconds of probes, so a slow resolution
// delays them instead; a resolution that never succeeds still loses them.
func NeighQueue(dev string) nsutil.SysctlSet {
	return nsutil.SysctlSet{Key: "net/ipv4/neigh/" + dev + "/unres_qlen_bytes", Value: "4194304"}
}

// Options shape a lab.
type Options struct {
	// Nodes is the number of nodes; 0 means 2.
	Nodes int
	// MTU is the underlay MTU; 0 means 1500.
	MTU int
	// NoCNI skips building the CNI plugin (for labs without pods).
	NoCNI bool
	// HostRouter makes each node's host router; nil means legacy. It is
	// called again for every new agent of the node.
	HostRouter func(n *Node) node.HostRouter
}

// Lab is a running namespace cluster.
type Lab struct {
	T  testing.TB
	ID string
	// UnderlayNS is the namespace of the bridge br0.
	UnderlayNS string
	Nodes      []*Node
	// CNIBin is the directory holding the routemode-cni binary.
	CNIBin string
	opts   Options

	mu     sync.Mutex
	hidden map[string]bool
	extra  []node.Peer
}

// RequireRoot skips the test with a clear message unless it runs as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	privileged.Require(t, "creates network namespaces, veth pairs and a bridge")
}

// New builds a lab; t.Cleanup tears it down.
func New(t testing.TB, opts Options) *Lab {
	t.Helper()
	RequireRoot(t)
	if opts.Nodes == 0 {
		opts.Nodes = 2
	}
	if opts.MTU == 0 {
		opts.MTU = 1500
	}
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	l := &Lab{T: t, ID: "rml" + hex.EncodeToString(b), opts: opts}
	t.Cleanup(l.cleanup)
	if !opts.NoCNI {
		l.CNIBin = BuildCNI(t)
	}
	l.UnderlayNS = l.ID + "-ul"
	if err := l.buildUnderlay(); err != nil {
		t.Fatalf("building underlay: %v", err)
	}
	for i := 1; i <= opts.Nodes; i++ {
		n, err := l.addNode(i)
		if err != nil {
			t.Fatalf("building node-%d: %v", i, err)
		}
		l.Nodes = append(l.Nodes, n)
	}
	t.Logf("lab %s: %d nodes on %s (underlay namespace %s)", l.ID, opts.Nodes, UnderlayPrefix, l.UnderlayNS)
	return l
}

// BuildCNI builds cmd/routemode-cni into a temporary directory and returns
// the directory (the CNI_PATH).
func BuildCNI(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	cmd := exec.Command("go", "build", "-o", filepath.Join(dir, "routemode-cni"), "github.com/routemode/routemode/cmd/routemode-cni")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building the CNI plugin: %v\n%s", err, out)
	}
	return dir
}

func (l *Lab) nsPath(name string) string { return nsutil.NamedPath(name) }

// UnderlayPath is the path of the underlay namespace.
func (l *Lab) UnderlayPath() string { return l.nsPath(l.UnderlayNS) }

func withHandle(nsName string, fn func(h nlsafe.Handle, n ns.NetNS) error) error {
	n, err := ns.GetNS(nsutil.NamedPath(nsName))
	if err != nil {
		return err
	}
	defer n.Close()
	h, err := nlsafe.NewHandleAt(netns.NsHandle(int(n.Fd())))
	if err != nil {
		return err
	}
	defer h.Close()
	return fn(h, n)
}

func (l *Lab) buildUnderlay() error {
	u, err := nsutil.Create(l.UnderlayNS)
	if err != nil {
		return err
	}
	u.Close()
	return withHandle(l.UnderlayNS, func(h nlsafe.Handle, _ ns.NetNS) error {
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0", MTU: l.opts.MTU}}
		if err := h.LinkAdd(br); err != nil {
			return fmt.Errorf("creating br0: %w", err)
		}
		if err := h.AddrAdd(br, &netlink.Addr{IPNet: &net.IPNet{IP: net.IP(OutsideIP.AsSlice()), Mask: net.CIDRMask(24, 32)}}); err != nil {
			return err
		}
		return h.LinkSetUp(br)
	})
}

// Node is one node namespace and its agent.
type Node struct {
	Lab    *Lab
	Index  int
	Name   string
	NSName string
	NS     ns.NetNS
	Handle nlsafe.Handle
	IP     netip.Addr
	// PodCIDR is the node's podCIDR; Underlay its underlay device (eth0).
	PodCIDR    netip.Prefix
	Underlay   string
	StateDir   string
	CNIConfDir string
	Agent      *node.Agent

	mu         sync.Mutex
	Generation int64
	Datapath   *v1alpha1.NodeDatapath
	Status     v1alpha1.RoutingNodeStatus
	Pods       []*Pod
}

func (l *Lab) addNode(i int) (*Node, error) {
	n := &Node{Lab: l, Index: i, Name: fmt.Sprintf("node-%d", i), NSName: fmt.Sprintf("%s-n%d", l.ID, i),
		IP: NodeIP(i), PodCIDR: PodCIDR(i), Underlay: "eth0"}
	nn, err := nsutil.Create(n.NSName)
	if err != nil {
		return nil, err
	}
	n.NS = nn
	// Strict reverse-path filtering everywhere, and forwarding on.
	if err := (nsutil.Sysctls{}).WriteAll(nn, []nsutil.SysctlSet{
		{Key: "net/ipv4/conf/all/rp_filter", Value: "1"},
		{Key: "net/ipv4/conf/default/rp_filter", Value: "1"},
		{Key: "net/ipv4/ip_forward", Value: "1"},
	}); err != nil {
		return nil, err
	}
	h, err := nlsafe.NewHandleAt(netns.NsHandle(int(nn.Fd())))
	if err != nil {
		return nil, err
	}
	n.Handle = h
	port := fmt.Sprintf("n%d", i)
	err = withHandle(l.UnderlayNS, func(uh nlsafe.Handle, _ ns.NetNS) error {
		v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: port, MTU: l.opts.MTU}, PeerName: n.Underlay,
			PeerMTU: uint32(l.opts.MTU), PeerNamespace: netlink.NsFd(int(nn.Fd()))}
		if err := uh.LinkAdd(v); err != nil {
			return fmt.Errorf("creating %s/%s: %w", port, n.Underlay, err)
		}
		br, err := uh.LinkByName("br0")
		if err != nil {
			return err
		}
		p, err := uh.LinkByName(port)
		if err != nil {
			return err
		}
		if err := uh.LinkSetMaster(p, br); err != nil {
			return err
		}
		return uh.LinkSetUp(p)
	})
	if err != nil {
		return nil, err
	}
	eth, err := h.LinkByName(n.Underlay)
	if err != nil {
		return nil, err
	}
	if err := h.AddrAdd(eth, &netlink.Addr{IPNet: &net.IPNet{IP: net.IP(n.IP.AsSlice()), Mask: net.CIDRMask(UnderlayPrefix.Bits(), 32)}}); err != nil {
		return nil, err
	}
	if err := h.LinkSetUp(eth); err != nil {
		return nil, err
	}
	if err := (nsutil.Sysctls{}).WriteAll(nn, []nsutil.SysctlSet{NeighQueue(n.Underlay)}); err != nil {
		return nil, err
	}
	n.StateDir = filepath.Join(l.T.TempDir(), n.Name, "state")
	n.CNIConfDir = filepath.Join(l.T.TempDir(), n.Name, "cni")
	n.Agent, err = n.NewAgent()
	return n, err
}

// NewAgent returns a fresh agent for the node, as a restarted agent process
// would be; Close the node's current agent first.
func (n *Node) NewAgent() (*node.Agent, error) {
	return node.New(node.Config{
		NodeName:     n.Name,
		NodeNS:       n.NS,
		Handle:       n.Handle,
		StateDir:     n.StateDir,
		CNIConfDir:   n.CNIConfDir,
		HealthNS:     fmt.Sprintf("%s-h%d", n.Lab.ID, n.Index),
		HostRouter:   n.hostRouter(),
		ProbeTimeout: 300 * time.Millisecond,
		Log:          n.logger(),
	})
}

func (n *Node) hostRouter() node.HostRouter {
	if n.Lab.opts.HostRouter == nil {
		return nil
	}
	return n.Lab.opts.HostRouter(n)
}

func (n *Node) logger() logr.Logger {
	return testr.NewWithInterface(n.Lab.T, testr.Options{Verbosity: 0}).WithName(n.Name)
}

// Readdress moves the node's underlay address to ip, as a node whose
// InternalIP changed.
func (n *Node) Readdress(ip netip.Addr) error {
	eth, err := n.Handle.LinkByName(n.Underlay)
	if err != nil {
		return err
	}
	mask := net.CIDRMask(UnderlayPrefix.Bits(), 32)
	n.mu.Lock()
	old := n.IP
	n.IP = ip
	n.mu.Unlock()
	// Deleting a primary address takes its secondaries along, so the old
	// one goes first.
	if err := n.Handle.AddrDel(eth, &netlink.Addr{IPNet: &net.IPNet{IP: net.IP(old.AsSlice()), Mask: mask}}); err != nil {
		return err
	}
	return n.Handle.AddrAdd(eth, &netlink.Addr{IPNet: &net.IPNet{IP: net.IP(ip.AsSlice()), Mask: mask}})
}

// Logger is the node's test logger.
func (n *Node) Logger() logr.Logger { return n.logger() }

// Path is the node namespace's path.
func (n *Node) Path() string { return n.Lab.nsPath(n.NSName) }

// Do runs fn on a thread in the node's namespace.
func (n *Node) Do(fn func() error) error { return n.NS.Do(func(ns.NetNS) error { return fn() }) }

// IPCmd runs `ip args...` in the node's namespace and returns its output.
func (n *Node) IPCmd(args ...string) (string, error) {
	out, err := exec.Command("ip", append([]string{"-n", n.NSName}, args...)...).CombinedOutput()
	return string(out), err
}

func (l *Lab) cleanup() {
	for _, n := range l.Nodes {
		if n.Agent != nil {
			n.Agent.Close()
		}
	}
	// Delete every namespace with the lab's prefix: pods, health
	// endpoints, nodes, the underlay; also ones a failed test half made.
	entries, _ := os.ReadDir(nsutil.RunDir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), l.ID+"-") {
			if err := nsutil.Delete(e.Name()); err != nil {
				l.T.Errorf("cleanup: %v", err)
			}
		}
	}
	for _, n := range l.Nodes {
		if n.Handle.Handle != nil {
			n.Handle.Close()
		}
		if n.NS != nil {
			n.NS.Close()
		}
	}
	entries, _ = os.ReadDir(nsutil.RunDir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), l.ID) {
			l.T.Errorf("cleanup left namespace %s", e.Name())
		}
	}
}

// Leftovers lists namespaces of lab id that still exist.
func Leftovers(id string) []string {
	var out []string
	entries, _ := os.ReadDir(nsutil.RunDir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), id) {
			out = append(out, e.Name())
		}
	}
	return out
}

// Context is a test context bounded by d.
func Context(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// Run runs a command (from the caller's namespace) and returns its
// combined output.
func (n *Node) Run(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	return string(out), err
}
