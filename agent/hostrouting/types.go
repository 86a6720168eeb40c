/*
Copyright 2026 The routemode Authors.

Licensed under the Apache License, Version 2.0.
*/

package hostrouting

import (
	"cmp"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
)

// BPFFSRoot is where bpffs is (or gets) mounted.
const BPFFSRoot = "/sys/fs/bpf"

// DefaultPinDir is the per-node pin directory. Node names become one path
// element; several nodes may share one bpffs.
func DefaultPinDir(node string) string {
	return filepath.Join(BPFFSRoot, "routemode", strings.ReplaceAll(node, "/", "_"))
}

// ErrUnsupported is returned by Apply for host routing "bpf" on a kernel
// that lacks what it needs (see Probe).
var ErrUnsupported = errors.New("eBPF host routing is not supported on this node")

// Endpoint is a local pod interface as the host-routing programs see it.
type Endpoint struct {
	// IP is the pod's IPv4 address.
	IP netip.Addr
	// ID is the endpoint id shown by `bpf endpoint list`.
	ID uint32
	// Flags are shown by `bpf endpoint list`; none are defined yet.
	Flags uint16
	// IfIndex is the host-side (lxc) veth's ifindex in the node namespace.
	IfIndex int
	// IfName is that device's name. When set, a device at IfIndex with
	// another name is not the endpoint's (a record that outlived its pod,
	// the index reused): the endpoint is left out rather than have traffic
	// redirected to an unrelated device.
	IfName string
	// MAC is the pod's eth0 MAC, the destination MAC of delivered packets.
	MAC net.HardwareAddr
	// NodeMAC is the lxc veth's MAC, the pod's gateway. Empty means "read it
	// from the device".
	NodeMAC net.HardwareAddr
}

// FormatEndpoint renders ep like `cilium bpf endpoint list`:
//
//	10.0.0.85:0 id=1445 flags=0x0000 ifindex=34 mac=C6:6D:95:CD:34:A2 nodemac=2A:0A:D9:17:44:22
func FormatEndpoint(ep Endpoint) string {
	return fmt.Sprintf("%s:0 id=%d flags=0x%04x ifindex=%d mac=%s nodemac=%s",
		ep.IP, ep.ID, ep.Flags, ep.IfIndex, upperMAC(ep.MAC), upperMAC(ep.NodeMAC))
}

func upperMAC(m net.HardwareAddr) string {
	if len(m) == 0 {
		return "00:00:00:00:00:00"
	}
	return strings.ToUpper(m.String())
}

// Config says which devices host routing uses on a node.
type Config struct {
	// Underlay is the device towards the other nodes (Cilium's native
	// device).
	Underlay string
	// TunnelDevice is the VXLAN device, "" if the node has none. A device
	// that does not exist (yet) is skipped; Apply again once it does.
	TunnelDevice string
	// NativeRoutingCIDR holds the pod addresses routed without masquerade;
	// pods' traffic to it is forwarded by BPF. The zero value leaves all
	// traffic leaving pods for other nodes to the stack.
	NativeRoutingCIDR netip.Prefix
	// PinDir is the node's bpffs directory, e.g. DefaultPinDir(node).
	PinDir string
	// DirectRoutes are the node's routes to other nodes' pod CIDRs through
	// the underlay (auto-direct-node-routes), as just installed. Pods'
	// packets to them go straight to the route's gateway with
	// bpf_redirect_neigh; everything else in NativeRoutingCIDR is looked up
	// in the FIB per packet. Routes through other devices (the tunnel) do
	// not belong here.
	DirectRoutes []DirectRoute
}

// DirectRoute is `Dst via Gateway dev <underlay> [mtu MTU]`.
type DirectRoute struct {
	Dst     netip.Prefix
	Gateway netip.Addr
	// MTU is the route's MTU; 0 means the underlay's. Forwarding honours
	// it, locked or not, so the programs do too.
	MTU int
}

func (r DirectRoute) String() string {
	if r.MTU > 0 {
		return fmt.Sprintf("%s via %s mtu %d", r.Dst, r.Gateway, r.MTU)
	}
	return fmt.Sprintf("%s via %s", r.Dst, r.Gateway)
}

// validate checks c for a switch to bpf (full) or to legacy (which only
// needs the pin dir).
func (c Config) validate(full bool) error {
	var errs []error
	if full && c.Underlay == "" {
		errs = append(errs, errors.New("no underlay device"))
	}
	if c.PinDir == "" || !filepath.IsAbs(c.PinDir) {
		errs = append(errs, fmt.Errorf("pin dir %q is not an absolute path", c.PinDir))
	}
	if p := c.NativeRoutingCIDR; p.IsValid() && (!p.Addr().Is4() || p.Masked() != p) {
		errs = append(errs, fmt.Errorf("native routing CIDR %s must be an IPv4 network address", p))
	}
	for _, r := range c.DirectRoutes {
		switch {
		case !r.Dst.IsValid() || !r.Dst.Addr().Is4() || r.Dst.Masked() != r.Dst:
			errs = append(errs, fmt.Errorf("direct route %s: the destination must be an IPv4 network address", r))
		case !r.Gateway.Is4():
			errs = append(errs, fmt.Errorf("direct route %s: the gateway must be an IPv4 address", r))
		case r.MTU != 0 && r.MTU < 68:
			errs = append(errs, fmt.Errorf("direct route %s: an IPv4 route MTU is at least 68", r))
		case !c.NativeRoutingCIDR.IsValid() || !c.NativeRoutingCIDR.Contains(r.Dst.Addr()) || r.Dst.Bits() < c.NativeRoutingCIDR.Bits():
			errs = append(errs, fmt.Errorf("direct route %s: the destination is not inside the native routing CIDR %s", r, c.NativeRoutingCIDR))
		}
	}
	return errors.Join(errs...)
}

// Program roles, in attach order: the network side first, so that when the
// pods' side starts bypassing the stack their replies are already
// delivered the same way.
type role int

const (
	roleNetdev role = iota
	roleOverlay
	roleLXC
)

// attachment is one program on one device's ingress.
type attachment struct {
	Dev     string
	Ifindex int
	Role    role
}

// pinName names a device's pin, unique per device within the node.
func (a attachment) pinName() string { return a.Dev + "_ingress" }

// device is a resolved network device.
type device struct {
	Name  string
	Index int
	MTU   int
	MAC   net.HardwareAddr
	// FlowBased marks a collect_md tunnel device.
	FlowBased bool
}

// plan returns the attachments for the resolved devices, network side
// first, then pods by ifindex.
func plan(underlay device, tunnel *device, lxcs []device) []attachment {
	atts := []attachment{{Dev: underlay.Name, Ifindex: underlay.Index, Role: roleNetdev}}
	if tunnel != nil {
		atts = append(atts, attachment{Dev: tunnel.Name, Ifindex: tunnel.Index, Role: roleOverlay})
	}
	seen := map[int]bool{underlay.Index: true}
	if tunnel != nil {
		seen[tunnel.Index] = true
	}
	sorted := slices.Clone(lxcs)
	slices.SortFunc(sorted, func(a, b device) int { return cmp.Compare(a.Index, b.Index) })
	for _, d := range sorted {
		if seen[d.Index] {
			continue
		}
		seen[d.Index] = true
		atts = append(atts, attachment{Dev: d.Name, Ifindex: d.Index, Role: roleLXC})
	}
	return atts
}
