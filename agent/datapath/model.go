// Package datapath is the pure core of the node agent: it renders the
// kernel state a node must have from its RoutingNode spec and its peers
// (Render), and turns desired and actual state into the minimal, ordered
// list of kernel operations (Plan). It does no I/O; agent/kernel reads the
// actual state and executes the operations.
//
// Ownership: the agent owns the devices rm_host/rm_net (router IP) and
// rm_vxlan (tunnel), every neighbour and FDB entry on rm_vxlan, the routes
// in the main table carrying RouteProtocol, the sysctls it lists, and the
// default-route MTU of the pods recorded in the endpoint directory. It
// also keeps the node's route to each such pod, which the CNI plugin made
// (protocol 182), while the pod's device exists: it puts back a deleted
// one but never deletes one, which is CNI DEL's job. Nothing else is read
// as "actual", so nothing else is ever changed or deleted.
//
// Order of a plan, so that no packet meets a missing route or a too-large
// MTU: devices and addresses; loosening sysctls (rp_filter, forwarding);
// missing pod routes; pod route MTUs that go down; per peer neighbour → FDB → route (flannel's
// order: the route last, so the kernel never resolves the gateway early);
// stale routes → stale FDB → stale neighbours; the tunnel device; pod route
// MTUs that go up; restored sysctls. Route changes are replaces of the same
// key (table, dst, tos, priority), which the kernel swaps atomically.
package datapath

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
)

// Names and numbers the agent owns.
const (
	// RouteProtocol marks the agent's peer routes (0xB5 = 181), so they are
	// listed with RT_FILTER_PROTOCOL and nobody else's route is touched.
	RouteProtocol = 0xB5
	// TunnelDevice is the VXLAN device.
	TunnelDevice = "rm_vxlan"
	// VNI is the VXLAN network identifier.
	VNI = 1
	// HostDevice holds the router IP (the pods' gateway); NetDevice is its
	// veth peer. Like cilium_host/cilium_net.
	HostDevice = "rm_host"
	NetDevice  = "rm_net"
	// TunnelOverhead is VXLAN over IPv4: outer IPv4 20, UDP 8, VXLAN 8,
	// inner Ethernet 14.
	TunnelOverhead = 50
)

// Node is a node's identity on the underlay and in the pod network.
type Node struct {
	Name    string
	IP      netip.Addr
	PodCIDR netip.Prefix
}

// Peer is another node as this node sees it.
type Peer struct {
	Node
	// VTEPMAC is the MAC of the peer's tunnel device.
	VTEPMAC net.HardwareAddr
	// Direct is true when the peer's node IP is on a directly connected
	// network (a route lookup gives no gateway); DirectDev is that device.
	Direct    bool
	DirectDev string
	// Why is set when the peer is not direct.
	Why string
}

// Tunnel is the VXLAN device.
type Tunnel struct {
	Name     string
	VNI      int
	Port     int
	Local    netip.Addr
	Underlay string
	MTU      int
	MAC      string
	// Addrs are the device's IPv4 addresses: the node's VTEP IP as a /32.
	// Reverse-path filtering drops every packet arriving on a device
	// without an IPv4 address unless the route back uses that same device,
	// even in loose mode (net/ipv4/fib_frontend.c, __fib_validate_source);
	// in the mixed phase the route back is the underlay, so the tunnel
	// device needs an address, as flannel gives flannel.1.
	Addrs []netip.Prefix
	// Learning is always false in desired state; read back from the kernel.
	Learning bool
	// Up is always true in desired state.
	Up bool
}

// Incompatible says why the existing device a cannot become d in place
// (empty when it can): such a device is deleted and created again.
func Incompatible(a, d Tunnel) string {
	switch {
	case a.VNI != d.VNI:
		return fmt.Sprintf("VNI %d, want %d", a.VNI, d.VNI)
	case a.Port != d.Port:
		return fmt.Sprintf("port %d, want %d", a.Port, d.Port)
	case a.Local != d.Local:
		return fmt.Sprintf("local %s, want %s", a.Local, d.Local)
	case a.Underlay != d.Underlay:
		return fmt.Sprintf("underlay %q, want %q", a.Underlay, d.Underlay)
	case a.Learning != d.Learning:
		return "learning on"
	}
	return ""
}

// HostDev is the router device pair.
type HostDev struct {
	// Exists is false in actual state when rm_host or rm_net is missing.
	Exists bool
	// Up is true when both ends are up.
	Up bool
	// Addrs are the IPv4 addresses on rm_host.
	Addrs []netip.Prefix
}

// Route is one route of the main table with RouteProtocol.
type Route struct {
	Dst    netip.Prefix
	Gw     netip.Addr
	Dev    string
	OnLink bool
	// MTU is the route's MTU; 0 means none.
	MTU int
}

func (r Route) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s via %s dev %s", r.Dst, r.Gw, r.Dev)
	if r.OnLink {
		b.WriteString(" onlink")
	}
	if r.MTU > 0 {
		fmt.Fprintf(&b, " mtu %d", r.MTU)
	}
	return b.String()
}

// Neigh is a permanent neighbour entry on the tunnel device: a peer's VTEP
// label (its podCIDR's network address) and its VTEP MAC.
type Neigh struct {
	Dev string
	IP  netip.Addr
	MAC string
}

// FDB is a permanent forwarding entry on the tunnel device: a peer's VTEP
// MAC is reached at its node IP.
type FDB struct {
	Dev string
	MAC string
	Dst netip.Addr
}

// Endpoint is a local endpoint (a pod, or the health endpoint) as its
// record names it.
type Endpoint struct {
	// Key is its container ID and interface name.
	Key string
	IP  netip.Addr
	// Dev is the node side of its veth.
	Dev string
}

// PodRoute is the node's route to one endpoint: its address as a /32
// through its device, scope link, protocol 182 (the CNI plugin's).
type PodRoute struct {
	// Key is the endpoint's container ID and interface name.
	Key string
	IP  netip.Addr
	Dev string
}

func (r PodRoute) String() string {
	return fmt.Sprintf("%s/32 dev %s proto 182 scope link (pod %s)", r.IP, r.Dev, r.Key)
}

// PodMTU is the default route MTU of one endpoint.
type PodMTU struct {
	// Key is the endpoint's container ID and interface name.
	Key string
	MTU int
}

// State is a node's kernel state as far as the agent owns it. The same
// type holds desired and actual state.
type State struct {
	Host   *HostDev
	Tunnel *Tunnel
	// Routes are keyed by destination (table main, tos 0, priority 0).
	Routes map[netip.Prefix]Route
	// Neighs are keyed by IP, FDB entries by MAC; both live on the tunnel.
	Neighs map[netip.Addr]Neigh
	FDB    map[string]FDB
	// Sysctls maps /proc/sys keys (slash form) to values.
	Sysctls map[string]string
	// Saved holds the values sysctls had before the agent loosened them,
	// as persisted in the agent's state directory.
	Saved map[string]string
	// PodMTU maps endpoint keys to default route MTUs.
	PodMTU map[string]int
	// PodRoutes maps endpoint keys to the node's route to the endpoint.
	// Actual state holds only endpoints whose device exists, with a zero
	// PodRoute when the route is missing or is not the one wanted.
	PodRoutes map[string]PodRoute
}

// NewState returns an empty State with its maps made.
func NewState() State {
	return State{
		Routes:    map[netip.Prefix]Route{},
		Neighs:    map[netip.Addr]Neigh{},
		FDB:       map[string]FDB{},
		Sysctls:   map[string]string{},
		Saved:     map[string]string{},
		PodMTU:    map[string]int{},
		PodRoutes: map[string]PodRoute{},
	}
}

// SortedKeys returns m's keys in order.
func SortedKeys[K interface{ ~string }, V any](m map[K]V) []K {
	keys := make([]K, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// VTEPMAC is the tunnel device MAC of the node with IP ip: a locally
// administered unicast address 0e:72:<the four bytes of ip>. Deterministic,
// so it survives agent restarts and device recreation, and unique per node
// IP on the underlay.
func VTEPMAC(ip netip.Addr) net.HardwareAddr {
	b := ip.As4()
	return net.HardwareAddr{0x0e, 0x72, b[0], b[1], b[2], b[3]}
}

// VTEPIP is the label of a node's VTEP in tunnel routes and neighbour
// entries: the network address of its podCIDR (flannel's choice).
func VTEPIP(podCIDR netip.Prefix) netip.Addr { return podCIDR.Masked().Addr() }

// RPFilterKey is the rp_filter sysctl of dev.
func RPFilterKey(dev string) string { return "net/ipv4/conf/" + dev + "/rp_filter" }

// ForwardingKey is the IPv4 forwarding sysctl.
const ForwardingKey = "net/ipv4/ip_forward"

// RPFilterLoose is rp_filter's loose mode.
const RPFilterLoose = "2"

func (t Tunnel) String() string {
	return fmt.Sprintf("%s vni=%d port=%d local=%s underlay=%s mtu=%d mac=%s addrs=%v learning=%v up=%v",
		t.Name, t.VNI, t.Port, t.Local, t.Underlay, t.MTU, t.MAC, t.Addrs, t.Learning, t.Up)
}
