//go:build linux

/*
Copyright 2026 The routemode Authors.

Licensed under the Apache License, Version 2.0.
*/

// Package hrlab builds a two-node pod network out of network namespaces for
// host-routing tests and benchmarks: the layout of datapath.md section 7.
//
//	pod ns (10.0.0.85/32 eth0) ─ lxc… ─ node-1 ns ─ ul0 ══ ul0 ─ node-2 ns ─ lxc… ─ pod ns (10.0.1.124/32)
//	                                     192.168.0.120/24    192.168.0.130/24
//
// Pods have a /32 address and a default route via the router IP 10.0.X.1,
// which the node holds on each lxc device and answers ARP for (proxy ARP on
// lxc). Native mode routes 10.0.Y.0/24 via the peer's underlay IP; tunnel
// mode routes it over a classic VXLAN device rm_vxlan (VNI 1, port 8472,
// static neighbour and FDB entry for the peer). Both are installed with
// RouteReplace, so switching is an atomic next-hop swap.
//
// Every namespace gets a unique name per run; Close (registered with
// t.Cleanup by New) deletes them all, which removes every link and route
// with them. Traffic only ever goes between these namespaces.
//
// It differs from internal/nslab on purpose: nslab runs the real agent on
// nodes behind a bridge, to test the rollout; hrlab has no agent and sets
// routes and maps by hand, so that the host-routing tests and the benchmark
// can hold every other variable fixed and put paths (legacy, bpf with and
// without direct routes, tunnel) side by side on the same topology as the
// prototype of datapath.md section 7.1. They share the namespace helpers of
// agent/nsutil.
package hrlab

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/routemode/routemode/agent/hostrouting"
	"github.com/routemode/routemode/agent/nsutil"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

const (
	// UnderlayDev is the name of each node's underlay device.
	UnderlayDev = "ul0"
	// TunnelDev is the name of each node's VXLAN device.
	TunnelDev = "rm_vxlan"
	// TunnelMTU is the route MTU over the tunnel: 1500 - 50.
	TunnelMTU = 1450
	vni       = 1
	vxlanPort = 8472
)

// NativeRoutingCIDR holds every pod of the lab.
var NativeRoutingCIDR = netip.MustParsePrefix("10.0.0.0/16")

// Lab is two nodes with their pods.
type Lab struct {
	ID    string
	Nodes [2]*Node
	names []string
}

// Node is a node network namespace.
type Node struct {
	Name       string // netns name
	Index      int    // 0 or 1
	NSPath     string
	UnderlayIP netip.Addr
	PodCIDR    netip.Prefix
	RouterIP   netip.Addr
	TunnelIP   netip.Addr // rm_vxlan's address, 10.0.X.0
	Pods       []*Pod
	lab        *Lab
}

// Pod is a pod network namespace wired to its node by a veth pair.
type Pod struct {
	Name     string // netns name
	NSPath   string
	IP       netip.Addr
	MAC      net.HardwareAddr // eth0
	LXC      string
	LXCIndex int
	LXCMAC   net.HardwareAddr
	Node     *Node
}

// Options shape the lab.
type Options struct {
	// PodsPerNode is at least 1.
	PodsPerNode int
	// Prefix starts every namespace name (default "rmhr").
	Prefix string
}

// New builds the lab and registers its removal with tb.Cleanup. It needs
// root.
func New(tb testing.TB, opts Options) *Lab {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("needs root for network namespaces")
	}
	l, err := Build(opts)
	if l != nil {
		tb.Cleanup(func() {
			if err := l.Close(); err != nil {
				tb.Errorf("remove lab: %v", err)
			}
		})
	}
	if err != nil {
		tb.Fatalf("build lab: %v", err)
	}
	return l
}

// Build is New without testing.TB; the caller must Close the lab, also on
// error if the lab is not nil.
func Build(opts Options) (*Lab, error) {
	if opts.PodsPerNode < 1 {
		opts.PodsPerNode = 1
	}
	if opts.Prefix == "" {
		opts.Prefix = "rmhr"
	}
	var rnd [3]byte
	_, _ = rand.Read(rnd[:])
	l := &Lab{ID: fmt.Sprintf("%s-%d-%s", opts.Prefix, os.Getpid(), hex.EncodeToString(rnd[:]))}
	for i := range l.Nodes {
		n := &Node{
			Name:       fmt.Sprintf("%s-n%d", l.ID, i+1),
			Index:      i,
			UnderlayIP: netip.AddrFrom4([4]byte{192, 168, 0, byte(120 + 10*i)}),
			PodCIDR:    netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 0, byte(i), 0}), 24),
			RouterIP:   netip.AddrFrom4([4]byte{10, 0, byte(i), 1}),
			TunnelIP:   netip.AddrFrom4([4]byte{10, 0, byte(i), 0}),
			lab:        l,
		}
		if err := l.newNS(n.Name); err != nil {
			return l, err
		}
		n.NSPath = nsPath(n.Name)
		if err := n.setupNode(); err != nil {
			return l, err
		}
		l.Nodes[i] = n
	}
	if err := l.connectUnderlay(); err != nil {
		return l, err
	}
	for _, n := range l.Nodes {
		for j := range opts.PodsPerNode {
			if err := n.addPod(j); err != nil {
				return l, err
			}
		}
	}
	return l, nil
}

func nsPath(name string) string { return nsutil.NamedPath(name) }

// newNS creates a named namespace (loopback up) without moving the caller.
func (l *Lab) newNS(name string) error {
	n, err := nsutil.Create(name)
	if err != nil {
		return fmt.Errorf("create netns %s: %w", name, err)
	}
	n.Close()
	l.names = append(l.names, name)
	return Run(nsPath(name), func() error {
		// The lab never needs IPv6; keep DAD and router solicitations
		// out of the counters.
		for _, k := range []string{"all", "default"} {
			if err := os.WriteFile("/proc/sys/net/ipv6/conf/"+k+"/disable_ipv6", []byte("1"), 0o644); err != nil {
				return err
			}
		}
		return nil
	})
}

// Close deletes every namespace of the lab (and with them all links,
// addresses, routes, nftables tables and attached programs).
func (l *Lab) Close() error {
	var errs []error
	for i := len(l.names) - 1; i >= 0; i-- {
		errs = append(errs, nsutil.Delete(l.names[i]))
	}
	l.names = nil
	return errors.Join(errs...)
}

// Run runs fn on a locked OS thread inside the namespace at path.
func Run(path string, fn func() error) error { return nsutil.RunIn(path, fn) }

// Sysctl writes a sysctl (path below /proc/sys) inside the namespace.
func Sysctl(nsPath, key, value string) error {
	return Run(nsPath, func() error {
		return os.WriteFile(filepath.Join("/proc/sys", key), []byte(value), 0o644)
	})
}

// Run runs fn inside the node's namespace.
func (n *Node) Run(fn func() error) error { return Run(n.NSPath, fn) }

// Run runs fn inside the pod's namespace.
func (p *Pod) Run(fn func() error) error { return Run(p.NSPath, fn) }

// Peer is the other node.
func (n *Node) Peer() *Node { return n.lab.Nodes[1-n.Index] }

func (n *Node) setupNode() error {
	for k, v := range map[string]string{
		"net/ipv4/ip_forward":             "1",
		"net/ipv4/conf/all/rp_filter":     "0",
		"net/ipv4/conf/default/rp_filter": "0",
	} {
		if err := Sysctl(n.NSPath, k, v); err != nil {
			return fmt.Errorf("%s: sysctl %s: %w", n.Name, k, err)
		}
	}
	return nil
}

func (l *Lab) connectUnderlay() error {
	n1, n2 := l.Nodes[0], l.Nodes[1]
	peerNS, err := netns.GetFromPath(n2.NSPath)
	if err != nil {
		return err
	}
	defer peerNS.Close()
	err = n1.Run(func() error {
		return netlink.LinkAdd(&netlink.Veth{
			LinkAttrs:     netlink.LinkAttrs{Name: UnderlayDev, MTU: 1500},
			PeerName:      UnderlayDev,
			PeerNamespace: netlink.NsFd(peerNS),
		})
	})
	if err != nil {
		return fmt.Errorf("create underlay veth: %w", err)
	}
	for _, n := range l.Nodes {
		err := n.Run(func() error {
			ul, err := netlink.LinkByName(UnderlayDev)
			if err != nil {
				return err
			}
			if err := netlink.AddrAdd(ul, &netlink.Addr{IPNet: prefixNet(netip.PrefixFrom(n.UnderlayIP, 24))}); err != nil {
				return err
			}
			return netlink.LinkSetUp(ul)
		})
		if err != nil {
			return fmt.Errorf("%s: underlay: %w", n.Name, err)
		}
	}
	return nil
}

func (n *Node) addPod(j int) error {
	ip := netip.AddrFrom4([4]byte{10, 0, byte(n.Index), byte(85 + j)})
	if n.Index == 1 {
		ip = netip.AddrFrom4([4]byte{10, 0, 1, byte(124 + j)})
	}
	p := &Pod{
		Name: fmt.Sprintf("%s-p%d", n.Name, j+1),
		IP:   ip,
		LXC:  fmt.Sprintf("lxc%02x%02x", n.Index, j),
		Node: n,
	}
	if err := n.lab.newNS(p.Name); err != nil {
		return err
	}
	p.NSPath = nsPath(p.Name)
	podNS, err := netns.GetFromPath(p.NSPath)
	if err != nil {
		return err
	}
	defer podNS.Close()

	err = n.Run(func() error {
		if err := netlink.LinkAdd(&netlink.Veth{
			LinkAttrs:     netlink.LinkAttrs{Name: p.LXC, MTU: 1500},
			PeerName:      "eth0",
			PeerNamespace: netlink.NsFd(podNS),
		}); err != nil {
			return err
		}
		lxc, err := netlink.LinkByName(p.LXC)
		if err != nil {
			return err
		}
		p.LXCIndex, p.LXCMAC = lxc.Attrs().Index, lxc.Attrs().HardwareAddr
		if err := netlink.AddrAdd(lxc, &netlink.Addr{IPNet: prefixNet(netip.PrefixFrom(n.RouterIP, 32))}); err != nil {
			return err
		}
		if err := netlink.LinkSetUp(lxc); err != nil {
			return err
		}
		if err := os.WriteFile(fmt.Sprintf("/proc/sys/net/ipv4/conf/%s/proxy_arp", p.LXC), []byte("1"), 0o644); err != nil {
			return err
		}
		if err := os.WriteFile(fmt.Sprintf("/proc/sys/net/ipv4/conf/%s/rp_filter", p.LXC), []byte("0"), 0o644); err != nil {
			return err
		}
		return netlink.RouteReplace(&netlink.Route{
			Dst: prefixNet(netip.PrefixFrom(p.IP, 32)), LinkIndex: p.LXCIndex, Scope: netlink.SCOPE_LINK,
		})
	})
	if err != nil {
		return fmt.Errorf("%s: lxc: %w", p.Name, err)
	}
	err = p.Run(func() error {
		eth0, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		p.MAC = eth0.Attrs().HardwareAddr
		if err := netlink.AddrAdd(eth0, &netlink.Addr{IPNet: prefixNet(netip.PrefixFrom(p.IP, 32))}); err != nil {
			return err
		}
		if err := netlink.LinkSetUp(eth0); err != nil {
			return err
		}
		if err := netlink.RouteReplace(&netlink.Route{
			Dst: prefixNet(netip.PrefixFrom(n.RouterIP, 32)), LinkIndex: eth0.Attrs().Index, Scope: netlink.SCOPE_LINK,
		}); err != nil {
			return err
		}
		return netlink.RouteReplace(&netlink.Route{
			Dst: prefixNet(netip.MustParsePrefix("0.0.0.0/0")), Gw: n.RouterIP.AsSlice(), LinkIndex: eth0.Attrs().Index,
		})
	})
	if err != nil {
		return fmt.Errorf("%s: eth0: %w", p.Name, err)
	}
	n.Pods = append(n.Pods, p)
	return nil
}

// SetPodRouteMTU sets the MTU of every pod's default route, as an agent
// does before the cluster starts encapsulating (0 removes it).
func (l *Lab) SetPodRouteMTU(mtu int) error {
	for _, n := range l.Nodes {
		for _, p := range n.Pods {
			err := p.Run(func() error {
				eth0, err := netlink.LinkByName("eth0")
				if err != nil {
					return err
				}
				return netlink.RouteReplace(&netlink.Route{
					Dst: prefixNet(netip.MustParsePrefix("0.0.0.0/0")), Gw: n.RouterIP.AsSlice(),
					LinkIndex: eth0.Attrs().Index, MTU: mtu,
				})
			})
			if err != nil {
				return fmt.Errorf("%s: route MTU: %w", p.Name, err)
			}
		}
	}
	return nil
}

// Native routes each node's peer pod CIDR via the peer's underlay IP.
func (l *Lab) Native() error {
	for _, n := range l.Nodes {
		if err := n.Native(); err != nil {
			return err
		}
	}
	return nil
}

// Native routes the peer's pod CIDR via the peer's underlay IP.
func (n *Node) Native() error {
	peer := n.Peer()
	return n.Run(func() error {
		ul, err := netlink.LinkByName(UnderlayDev)
		if err != nil {
			return err
		}
		return netlink.RouteReplace(&netlink.Route{
			Dst: prefixNet(peer.PodCIDR), Gw: peer.UnderlayIP.AsSlice(), LinkIndex: ul.Attrs().Index,
		})
	})
}

// DirectRoutes is what the agent mirrors into the programs' map from the
// route Native installs.
func (n *Node) DirectRoutes() []hostrouting.DirectRoute {
	peer := n.Peer()
	return []hostrouting.DirectRoute{{Dst: peer.PodCIDR, Gateway: peer.UnderlayIP}}
}

// Tunnel routes each node's peer pod CIDR over VXLAN, creating the VXLAN
// devices on first use.
func (l *Lab) Tunnel() error {
	if err := l.EnsureVXLAN(); err != nil {
		return err
	}
	for _, n := range l.Nodes {
		if err := n.Tunnel(); err != nil {
			return err
		}
	}
	return nil
}

// Tunnel routes the peer's pod CIDR over rm_vxlan; EnsureVXLAN first.
func (n *Node) Tunnel() error {
	peer := n.Peer()
	return n.Run(func() error {
		vx, err := netlink.LinkByName(TunnelDev)
		if err != nil {
			return err
		}
		return netlink.RouteReplace(&netlink.Route{
			Dst: prefixNet(peer.PodCIDR), Gw: peer.TunnelIP.AsSlice(), LinkIndex: vx.Attrs().Index,
			Flags: int(netlink.FLAG_ONLINK), MTU: TunnelMTU,
		})
	})
}

// EnsureVXLAN creates rm_vxlan on both nodes with the peer's neighbour and
// FDB entries (receive-ready; routes unchanged).
func (l *Lab) EnsureVXLAN() error {
	macs := [2]net.HardwareAddr{}
	for i, n := range l.Nodes {
		err := n.Run(func() error {
			if existing, err := netlink.LinkByName(TunnelDev); err == nil {
				macs[i] = existing.Attrs().HardwareAddr
				return nil
			}
			ul, err := netlink.LinkByName(UnderlayDev)
			if err != nil {
				return err
			}
			vx := &netlink.Vxlan{
				LinkAttrs:    netlink.LinkAttrs{Name: TunnelDev, MTU: TunnelMTU},
				VxlanId:      vni,
				Port:         vxlanPort,
				SrcAddr:      n.UnderlayIP.AsSlice(),
				VtepDevIndex: ul.Attrs().Index,
				Learning:     false,
			}
			if err := netlink.LinkAdd(vx); err != nil {
				return err
			}
			link, err := netlink.LinkByName(TunnelDev)
			if err != nil {
				return err
			}
			macs[i] = link.Attrs().HardwareAddr
			if err := netlink.AddrAdd(link, &netlink.Addr{IPNet: prefixNet(netip.PrefixFrom(n.TunnelIP, 32))}); err != nil {
				return err
			}
			if err := os.WriteFile("/proc/sys/net/ipv4/conf/"+TunnelDev+"/rp_filter", []byte("0"), 0o644); err != nil {
				return err
			}
			return netlink.LinkSetUp(link)
		})
		if err != nil {
			return fmt.Errorf("%s: vxlan: %w", n.Name, err)
		}
	}
	for i, n := range l.Nodes {
		peer := n.Peer()
		peerMAC := macs[1-i]
		err := n.Run(func() error {
			vx, err := netlink.LinkByName(TunnelDev)
			if err != nil {
				return err
			}
			idx := vx.Attrs().Index
			if err := netlink.NeighSet(&netlink.Neigh{
				LinkIndex: idx, Family: unix.AF_INET, State: netlink.NUD_PERMANENT,
				IP: peer.TunnelIP.AsSlice(), HardwareAddr: peerMAC,
			}); err != nil {
				return err
			}
			return netlink.NeighSet(&netlink.Neigh{
				LinkIndex: idx, Family: unix.AF_BRIDGE, State: netlink.NUD_PERMANENT, Flags: netlink.NTF_SELF,
				IP: peer.UnderlayIP.AsSlice(), HardwareAddr: peerMAC,
			})
		})
		if err != nil {
			return fmt.Errorf("%s: vxlan peer: %w", n.Name, err)
		}
	}
	return nil
}

func prefixNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
