// Package netlab builds throwaway clusters out of network namespaces for
// everything that needs real packets: the agent's tests, the host-routing
// tests and benchmark, and the lab binary (hack/lab). It is the one place
// that knows the lab's topology and addresses.
//
// A lab is N node namespaces on an underlay, either a bridge br0 in a
// namespace of its own (never in the caller's), which also holds OutsideIP
// as an "outside" address for masquerade tests, or, for two nodes, one
// point-to-point veth pair. Addresses follow the seed article: node-i is
// 192.168.0.(110+10i)/24 on its eth0 (node-1 .120, node-2 .130, node-3
// .140) with podCIDR 10.0.(i-1).0/24 inside 10.0.0.0/16.
//
// Pods are wired either by the real CNI plugin binary, run inside the node's
// namespace with the configuration the node's agent wrote (AddPod), or by
// agent/podnet directly (AddPodDirect) for labs without an agent. The
// datapath is either the real agent's (Node.Agent, Reconcile, Converge) or
// explicit: Node.ApplyDatapath renders, plans and applies a NodeDatapath
// with the agent's own datapath and kernel packages but nothing else, so a
// benchmark holds every other variable fixed.
//
// Every name starts with the lab's ID, random per lab, so labs running
// concurrently on one machine never collide. What a lab makes (namespaces,
// bpffs pin directories) is recorded in a state file under StateRoot before
// it is made: Close removes it all, and Sweep removes what labs of
// processes that died left behind.
//
// The package does not import testing, so the lab binary uses it too; New
// (testing.go) is the wrapper for tests.
package netlab

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/go-logr/logr"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/routemode/routemode/agent/nlsafe"
	"github.com/routemode/routemode/agent/node"
	"github.com/routemode/routemode/agent/nsutil"
	"github.com/routemode/routemode/api/v1alpha1"
)

// sysctls writes through this process's own /proc/sys: the lab runs on
// the host, not in a container.
var sysctls nsutil.Sysctls

// Addresses of every lab.
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

// UnderlayDev is every node's underlay device.
const UnderlayDev = "eth0"

// Underlay is how the nodes are joined.
type Underlay int

const (
	// Bridge joins the nodes on br0 in a namespace of its own.
	Bridge Underlay = iota
	// PointToPoint joins two nodes by one veth pair: no bridge between
	// them, for measurements that must not include one.
	PointToPoint
)

// Spec describes a lab.
type Spec struct {
	// Nodes is the number of nodes; 0 means 2.
	Nodes int
	// MTU is the underlay MTU; 0 means 1500.
	MTU      int
	Underlay Underlay
	// RPFilter is net.ipv4.conf.{all,default}.rp_filter in every node: 1
	// (strict, as many distributions ship it) shows whether a datapath
	// loosens it where it must.
	RPFilter int
	// Prefix starts every name the lab makes. A lab without StateFile is a
	// throwaway one: an empty Prefix means a random "rml<6 hex>-".
	Prefix string
	// StateFile, when set, records the lab there rather than under
	// StateRoot: a lab that outlives its process (hack/lab's), which only
	// Down removes and Sweep never touches.
	StateFile string
	// CNI builds the CNI plugin for AddPod.
	CNI bool
	// Agents gives every node an agent (agent/node), driven by Reconcile
	// and Converge as its controller would drive it, without an API server.
	Agents bool
	// HostRouter makes each node's host router for its agents; nil means
	// legacy.
	HostRouter func(n *Node) node.HostRouter
	// Log receives the agents' logs.
	Log logr.Logger
	// Dir holds the nodes' agent state and CNI configuration; empty means
	// a directory of the lab's own, removed by Close.
	Dir string
}

// Lab is a running namespace cluster.
type Lab struct {
	ID string
	// UnderlayNS is the namespace of br0 (Bridge underlays only).
	UnderlayNS string
	Nodes      []*Node
	// CNIBin is the directory holding the routemode-cni binary.
	CNIBin string
	spec   Spec
	state  *state

	mu     sync.Mutex
	hidden map[string]bool
	extra  []node.Peer
}

// Build makes a lab. On error it has removed what it made.
func Build(spec Spec) (l *Lab, err error) {
	if spec.Nodes == 0 {
		spec.Nodes = 2
	}
	if spec.MTU == 0 {
		spec.MTU = 1500
	}
	if spec.Underlay == PointToPoint && spec.Nodes != 2 {
		return nil, fmt.Errorf("a point-to-point underlay joins 2 nodes, not %d", spec.Nodes)
	}
	if spec.Prefix == "" && spec.StateFile == "" {
		b := make([]byte, 3)
		_, _ = rand.Read(b)
		spec.Prefix = "rml" + hex.EncodeToString(b) + "-"
	}
	if spec.StateFile == "" {
		spec.StateFile = filepath.Join(StateRoot, strings.TrimSuffix(spec.Prefix, "-")+".json")
	}
	l = &Lab{ID: spec.Prefix, spec: spec}
	if l.state, err = newState(spec.StateFile); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, l.Close())
			l = nil
		}
	}()
	if spec.Dir == "" {
		if l.spec.Dir, err = os.MkdirTemp("", "netlab-"+spec.Prefix); err != nil {
			return l, err
		}
		if err := l.state.add(func(s *record) { s.Dirs = append(s.Dirs, l.spec.Dir) }); err != nil {
			return l, err
		}
	}
	if spec.CNI {
		if l.CNIBin, err = BuildCNI(); err != nil {
			return l, err
		}
	}
	for i := 1; i <= spec.Nodes; i++ {
		n, err := l.addNode(i)
		if err != nil {
			return l, fmt.Errorf("building node-%d: %w", i, err)
		}
		l.Nodes = append(l.Nodes, n)
	}
	if spec.Underlay == Bridge {
		err = l.bridge()
	} else {
		err = l.pointToPoint()
	}
	if err != nil {
		return l, fmt.Errorf("building the underlay: %w", err)
	}
	for _, n := range l.Nodes {
		if err := n.upUnderlay(); err != nil {
			return l, err
		}
		if spec.Agents {
			if n.Agent, err = n.NewAgent(); err != nil {
				return l, fmt.Errorf("%s: %w", n.Name, err)
			}
		}
	}
	return l, nil
}

// Close stops the agents and removes everything the lab made.
func (l *Lab) Close() error {
	l.Detach()
	return l.state.remove()
}

// Detach stops the agents and echo responders and lets go of the nodes'
// namespaces, leaving the lab to Down.
func (l *Lab) Detach() {
	for _, n := range l.Nodes {
		for _, p := range n.Pods {
			if p.echo != nil {
				p.echo.Close()
			}
		}
		if n.Agent != nil {
			n.Agent.Close()
		}
		n.Handle.Close()
		n.NS.Close()
	}
}

// newNS creates a namespace with IPv6 off (the lab never uses it; DAD and
// router solicitations stay out of every counter), recorded first.
func (l *Lab) newNS(name string) (ns.NetNS, error) {
	if err := l.state.add(func(s *record) { s.Namespaces = append(s.Namespaces, name) }); err != nil {
		return nil, err
	}
	n, err := nsutil.Create(name)
	if err != nil {
		// Not ours (Create never takes over an existing namespace): forget
		// it, so that removing the lab leaves it alone.
		return nil, errors.Join(err, l.state.add(func(s *record) {
			if i := slices.Index(s.Namespaces, name); i >= 0 {
				s.Namespaces = slices.Delete(s.Namespaces, i, i+1)
			}
		}))
	}
	err = sysctls.WriteAll(n, []nsutil.SysctlSet{
		{Key: "net/ipv6/conf/all/disable_ipv6", Value: "1"},
		{Key: "net/ipv6/conf/default/disable_ipv6", Value: "1"},
	})
	if err != nil {
		n.Close()
		return nil, err
	}
	return n, nil
}

// Node is one node namespace and, when it runs one, its agent.
type Node struct {
	Lab    *Lab
	Index  int
	Name   string
	NSName string
	NS     ns.NetNS
	Handle nlsafe.Handle
	IP     netip.Addr
	// PodCIDR is the node's podCIDR; Underlay its underlay device.
	PodCIDR    netip.Prefix
	Underlay   string
	StateDir   string
	CNIConfDir string
	Agent      *node.Agent
	Pods       []*Pod

	mu         sync.Mutex
	Generation int64
	Datapath   *v1alpha1.NodeDatapath
	Status     v1alpha1.RoutingNodeStatus
}

func (l *Lab) addNode(i int) (*Node, error) {
	n := &Node{Lab: l, Index: i, Name: fmt.Sprintf("node-%d", i), NSName: fmt.Sprintf("%snode-%d", l.ID, i),
		IP: NodeIP(i), PodCIDR: PodCIDR(i), Underlay: UnderlayDev,
		StateDir:   filepath.Join(l.spec.Dir, fmt.Sprintf("node-%d", i), "state"),
		CNIConfDir: filepath.Join(l.spec.Dir, fmt.Sprintf("node-%d", i), "cni"),
	}
	nn, err := l.newNS(n.NSName)
	if err != nil {
		return nil, err
	}
	n.NS = nn
	rp := fmt.Sprint(l.spec.RPFilter)
	if err := sysctls.WriteAll(nn, []nsutil.SysctlSet{
		{Key: "net/ipv4/conf/all/rp_filter", Value: rp},
		{Key: "net/ipv4/conf/default/rp_filter", Value: rp},
		{Key: "net/ipv4/ip_forward", Value: "1"},
	}); err != nil {
		nn.Close()
		return nil, err
	}
	if n.Handle, err = nlsafe.NewHandleAt(netns.NsHandle(int(nn.Fd()))); err != nil {
		nn.Close()
		return nil, err
	}
	return n, nil
}

func (l *Lab) bridge() error {
	l.UnderlayNS = l.ID + "underlay"
	u, err := l.newNS(l.UnderlayNS)
	if err != nil {
		return err
	}
	defer u.Close()
	h, err := nlsafe.NewHandleAt(netns.NsHandle(int(u.Fd())))
	if err != nil {
		return err
	}
	defer h.Close()
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0", MTU: l.spec.MTU}}
	if err := h.LinkAdd(br); err != nil {
		return fmt.Errorf("creating br0: %w", err)
	}
	if err := h.AddrAdd(br, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(OutsideIP, UnderlayPrefix.Bits()))}); err != nil {
		return err
	}
	if err := h.LinkSetUp(br); err != nil {
		return err
	}
	brl, err := h.LinkByName("br0")
	if err != nil {
		return err
	}
	for _, n := range l.Nodes {
		port := BridgePort(n.Index)
		v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: port, MTU: l.spec.MTU, MasterIndex: brl.Attrs().Index}, PeerName: n.Underlay,
			PeerMTU: uint32(l.spec.MTU), PeerNamespace: netlink.NsFd(int(n.NS.Fd()))}
		if err := h.LinkAdd(v); err != nil {
			return fmt.Errorf("creating %s/%s: %w", port, n.Underlay, err)
		}
		p, err := h.LinkByName(port)
		if err != nil {
			return err
		}
		if err := h.LinkSetUp(p); err != nil {
			return err
		}
	}
	return nil
}

func (l *Lab) pointToPoint() error {
	a, b := l.Nodes[0], l.Nodes[1]
	return a.Handle.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: a.Underlay, MTU: l.spec.MTU}, PeerName: b.Underlay,
		PeerMTU: uint32(l.spec.MTU), PeerNamespace: netlink.NsFd(int(b.NS.Fd()))})
}

func (n *Node) upUnderlay() error {
	eth, err := n.Handle.LinkByName(n.Underlay)
	if err != nil {
		return err
	}
	if err := n.Handle.AddrAdd(eth, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(n.IP, UnderlayPrefix.Bits()))}); err != nil {
		return err
	}
	if lo, err := n.Handle.LinkByName("lo"); err == nil {
		if err := n.Handle.LinkSetUp(lo); err != nil {
			return err
		}
	}
	if err := n.Handle.LinkSetUp(eth); err != nil {
		return err
	}
	return sysctls.WriteAll(n.NS, []nsutil.SysctlSet{NeighQueue(n.Underlay)})
}

// NeighQueue (for device dev) is set on the devices that carry probe
// streams: each node's eth0, each pod's eth0 and its lxc device.
// UDP-only flows never confirm a neighbour, so the kernel re-probes it
// every half minute or so; on a machine starved of CPU the ARP answer can
// be processed late, the entry goes through FAILED and is resolved again
// while the streams keep sending. The default queue for packets awaiting
// resolution (212992 bytes, some 140 ms of probe traffic) then overflows
// and the kernel discards them (unresolved_discards in
// /proc/net/stat/arp_cache), which has nothing to do with the datapath
// under test. A 4 MiB queue holds seconds of probes, so a slow resolution
// delays them instead; a resolution that never succeeds still loses them.
func NeighQueue(dev string) nsutil.SysctlSet {
	return nsutil.SysctlSet{Key: "net/ipv4/neigh/" + dev + "/unres_qlen_bytes", Value: "4194304"}
}

// BridgePort is node i's port on br0, in the underlay namespace.
func BridgePort(i int) string { return fmt.Sprintf("node%d", i) }

// Readdress moves the node's underlay address to ip, as a node whose
// InternalIP changed.
func (n *Node) Readdress(ip netip.Addr) error {
	eth, err := n.Handle.LinkByName(n.Underlay)
	if err != nil {
		return err
	}
	n.mu.Lock()
	old := n.IP
	n.IP = ip
	n.mu.Unlock()
	// Deleting a primary address takes its secondaries along, so the old
	// one goes first.
	if err := n.Handle.AddrDel(eth, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(old, UnderlayPrefix.Bits()))}); err != nil {
		return err
	}
	return n.Handle.AddrAdd(eth, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(ip, UnderlayPrefix.Bits()))})
}

// UnderlayPath is the path of the underlay namespace (Bridge underlays).
func (l *Lab) UnderlayPath() string { return nsutil.NamedPath(l.UnderlayNS) }

// Path is the node namespace's path.
func (n *Node) Path() string { return nsutil.NamedPath(n.NSName) }

// Do runs fn on a thread in the node's namespace.
func (n *Node) Do(fn func() error) error { return n.NS.Do(func(ns.NetNS) error { return fn() }) }

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
