// Package kernel reads the node's kernel state that the agent owns into a
// datapath.State and executes datapath operations, through one injected
// netlink handle (so the same code runs against any namespace) and the
// node namespace for sysctls. It logs one line per kernel change.
//
// Deleting something already gone (ENOENT, ESRCH, ENODEV, link not found)
// counts as success.
package kernel

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/go-logr/logr"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/routemode/routemode/agent/datapath"
	"github.com/routemode/routemode/agent/endpoint"
	"github.com/routemode/routemode/agent/nlsafe"
	"github.com/routemode/routemode/agent/nsutil"
	"github.com/routemode/routemode/agent/podnet"
)

// SavedSysctlsFile is the file in the agent's state directory that keeps
// the sysctl values the agent replaced (rp_filter before loosening), as a
// JSON object of key to value.
const SavedSysctlsFile = "saved-sysctls.json"

// Kernel is the node's kernel as the agent sees it.
type Kernel struct {
	// H is a handle in the node's namespace.
	H nlsafe.Handle
	// NS is the node's namespace, for sysctls; nil means the caller's.
	NS ns.NetNS
	// Sysctls is the /proc/sys mount sysctls are read and written through.
	Sysctls nsutil.Sysctls
	// StateDir holds SavedSysctlsFile.
	StateDir string
	Log      logr.Logger
}

// Underlay returns the underlay device: name if given, else the device that
// holds nodeIP.
func (k *Kernel) Underlay(name string, nodeIP netip.Addr) (dev string, mtu int, err error) {
	if name != "" {
		l, err := k.H.LinkByName(name)
		if err != nil {
			return "", 0, fmt.Errorf("underlay device %s: %w", name, err)
		}
		return name, l.Attrs().MTU, nil
	}
	addrs, err := k.H.AddrList(nil, unix.AF_INET)
	if err != nil {
		return "", 0, err
	}
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP.To4()); ok && ip == nodeIP {
			l, err := k.H.LinkByIndex(a.LinkIndex)
			if err != nil {
				return "", 0, err
			}
			return l.Attrs().Name, l.Attrs().MTU, nil
		}
	}
	return "", 0, fmt.Errorf("no device holds the node IP %s", nodeIP)
}

// Classify reports whether peerIP is directly reachable: the route to it
// has no gateway (Cilium's and flannel's same-L2 test).
func (k *Kernel) Classify(peerIP netip.Addr) (direct bool, dev, why string) {
	routes, err := k.H.RouteGet(net.IP(peerIP.AsSlice()))
	if err != nil {
		return false, "", fmt.Sprintf("no route to %s: %v", peerIP, err)
	}
	if len(routes) == 0 {
		return false, "", fmt.Sprintf("no route to %s", peerIP)
	}
	r := routes[0]
	if r.Gw != nil && !r.Gw.Equal(net.IP(peerIP.AsSlice())) {
		return false, "", fmt.Sprintf("%s is reached via gateway %s", peerIP, r.Gw)
	}
	l, err := k.H.LinkByIndex(r.LinkIndex)
	if err != nil {
		return false, "", fmt.Sprintf("route to %s: %v", peerIP, err)
	}
	if l.Attrs().Flags&net.FlagLoopback != 0 {
		return false, "", fmt.Sprintf("%s is a local address", peerIP)
	}
	return true, l.Attrs().Name, ""
}

// ReadRequest says what besides the owned devices and routes to read.
type ReadRequest struct {
	// SysctlKeys are read in the node namespace; missing ones are absent.
	SysctlKeys []string
	// Endpoints' default route MTUs are read in their namespaces; an
	// endpoint whose namespace is gone is absent.
	Endpoints []endpoint.Endpoint
}

// Read returns the actual state.
func (k *Kernel) Read(req ReadRequest) (datapath.State, error) {
	st := datapath.NewState()
	links, err := k.H.LinkList()
	if err != nil {
		return st, fmt.Errorf("listing links: %w", err)
	}
	names := map[int]string{}
	byName := map[string]netlink.Link{}
	for _, l := range links {
		names[l.Attrs().Index] = l.Attrs().Name
		byName[l.Attrs().Name] = l
	}

	host, hostOK := byName[datapath.HostDevice]
	peer, peerOK := byName[datapath.NetDevice]
	if hostOK || peerOK {
		h := &datapath.HostDev{Exists: hostOK && peerOK}
		if h.Exists {
			h.Up = host.Attrs().Flags&net.FlagUp != 0 && peer.Attrs().Flags&net.FlagUp != 0
			addrs, err := k.H.AddrList(host, unix.AF_INET)
			if err != nil {
				return st, fmt.Errorf("listing addresses of %s: %w", datapath.HostDevice, err)
			}
			h.Addrs = prefixes(addrs)
		}
		st.Host = h
	}

	if l, ok := byName[datapath.TunnelDevice]; ok {
		t := datapath.Tunnel{Name: datapath.TunnelDevice, VNI: -1, MAC: l.Attrs().HardwareAddr.String(),
			MTU: l.Attrs().MTU, Up: l.Attrs().Flags&net.FlagUp != 0}
		if v, isVXLAN := l.(*netlink.Vxlan); isVXLAN {
			t.VNI, t.Port, t.Learning = v.VxlanId, v.Port, v.Learning
			t.Local, _ = netip.AddrFromSlice(v.SrcAddr.To4())
			t.Underlay = names[v.VtepDevIndex]
		}
		addrs, err := k.H.AddrList(l, unix.AF_INET)
		if err != nil {
			return st, fmt.Errorf("listing addresses of %s: %w", datapath.TunnelDevice, err)
		}
		t.Addrs = prefixes(addrs)
		st.Tunnel = &t
		idx := l.Attrs().Index
		neighs, err := k.H.NeighList(idx, unix.AF_INET)
		if err != nil {
			return st, fmt.Errorf("listing neighbours of %s: %w", datapath.TunnelDevice, err)
		}
		for _, n := range neighs {
			ip, ok := netip.AddrFromSlice(n.IP.To4())
			if !ok || n.State&netlink.NUD_PERMANENT == 0 {
				continue
			}
			st.Neighs[ip] = datapath.Neigh{Dev: datapath.TunnelDevice, IP: ip, MAC: n.HardwareAddr.String()}
		}
		fdb, err := k.H.NeighList(idx, unix.AF_BRIDGE)
		if err != nil {
			return st, fmt.Errorf("listing FDB of %s: %w", datapath.TunnelDevice, err)
		}
		for _, n := range fdb {
			dst, ok := netip.AddrFromSlice(n.IP.To4())
			if !ok || n.State&netlink.NUD_PERMANENT == 0 {
				continue
			}
			mac := n.HardwareAddr.String()
			st.FDB[mac] = datapath.FDB{Dev: datapath.TunnelDevice, MAC: mac, Dst: dst}
		}
	}

	routes, err := k.H.RouteListFiltered(unix.AF_INET,
		&netlink.Route{Protocol: datapath.RouteProtocol, Table: unix.RT_TABLE_MAIN},
		netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
	if err != nil {
		return st, fmt.Errorf("listing routes: %w", err)
	}
	for _, r := range routes {
		if r.Dst == nil {
			continue
		}
		dstIP, _ := netip.AddrFromSlice(r.Dst.IP.To4())
		ones, _ := r.Dst.Mask.Size()
		gw, _ := netip.AddrFromSlice(r.Gw.To4())
		dst := netip.PrefixFrom(dstIP, ones)
		st.Routes[dst] = datapath.Route{Dst: dst, Gw: gw, Dev: names[r.LinkIndex],
			OnLink: r.Flags&int(netlink.FLAG_ONLINK) != 0, MTU: r.MTU}
	}

	for _, key := range req.SysctlKeys {
		v, err := k.Sysctls.Read(k.NS, key)
		if err == nil {
			st.Sysctls[key] = v
		}
	}
	saved, err := k.LoadSaved()
	if err != nil {
		return st, err
	}
	st.Saved = saved

	for _, ep := range req.Endpoints {
		if mtu, err := podnet.RouteMTU(ep); err == nil {
			st.PodMTU[EndpointKey(ep)] = mtu
		}
	}
	if err := k.readPodRoutes(&st, req.Endpoints); err != nil {
		return st, err
	}
	return st, nil
}

// readPodRoutes records the node's route to every endpoint whose device
// is still the one its record names (another device of that name is a
// pod being wired anew, whose CNI ADD routes it).
func (k *Kernel) readPodRoutes(st *datapath.State, eps []endpoint.Endpoint) error {
	if len(eps) == 0 {
		return nil
	}
	if beforePodRoutes != nil {
		beforePodRoutes()
	}
	routes, err := k.H.RouteListFiltered(unix.AF_INET,
		&netlink.Route{Protocol: podnet.RouteProtocol, Table: unix.RT_TABLE_MAIN},
		netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
	if err != nil {
		return fmt.Errorf("listing pod routes: %w", err)
	}
	// The devices are read after the routes, not with the rest of the
	// state: the kernel deletes a device by taking it down, which flushes
	// its routes, before it leaves the link list, so a device read up
	// after its route was found missing was up then too. Read before, a
	// pod deleted in between would pass for a route the kernel lost.
	links, err := k.H.LinkList()
	if err != nil {
		return fmt.Errorf("listing links: %w", err)
	}
	names := map[int]string{}
	byName := map[string]netlink.Link{}
	for _, l := range links {
		names[l.Attrs().Index] = l.Attrs().Name
		byName[l.Attrs().Name] = l
	}
	byIP := map[netip.Addr]netlink.Route{}
	for _, r := range routes {
		if r.Dst == nil || r.Scope != netlink.SCOPE_LINK || r.Gw != nil {
			continue
		}
		if ones, _ := r.Dst.Mask.Size(); ones != 32 {
			continue
		}
		if ip, ok := netip.AddrFromSlice(r.Dst.IP.To4()); ok {
			byIP[ip] = r
		}
	}
	for _, ep := range eps {
		// A device that is down is being deleted or not yet wired: the
		// pod's CNI DEL or ADD owns its route then.
		if l, ok := byName[ep.LXCName]; !ok || l.Attrs().Index != ep.LXCIndex || l.Attrs().Flags&net.FlagUp == 0 {
			continue
		}
		key := EndpointKey(ep)
		have := datapath.PodRoute{}
		if r, ok := byIP[ep.IP]; ok {
			have = datapath.PodRoute{Key: key, IP: ep.IP, Dev: names[r.LinkIndex]}
		}
		st.PodRoutes[key] = have
	}
	return nil
}

// beforePodRoutes, when set by a test, runs once Read has read the rest of
// the state, just before the pod routes: a pod deleted there was reported
// missing when the devices were read with the rest.
var beforePodRoutes func()

// LocalEndpoints indexes endpoint records by EndpointKey and describes them
// for datapath.Render, sorted by key.
func LocalEndpoints(eps []endpoint.Endpoint) (map[string]endpoint.Endpoint, []datapath.Endpoint) {
	byKey := map[string]endpoint.Endpoint{}
	for _, ep := range eps {
		byKey[EndpointKey(ep)] = ep
	}
	local := make([]datapath.Endpoint, 0, len(byKey))
	for _, key := range slices.Sorted(maps.Keys(byKey)) {
		ep := byKey[key]
		local = append(local, datapath.Endpoint{Key: key, IP: ep.IP, Dev: ep.LXCName})
	}
	return byKey, local
}

func prefixes(addrs []netlink.Addr) []netip.Prefix {
	var out []netip.Prefix
	for _, a := range addrs {
		ip, _ := netip.AddrFromSlice(a.IP.To4())
		ones, _ := a.Mask.Size()
		out = append(out, netip.PrefixFrom(ip, ones))
	}
	return out
}

// EndpointKey identifies an endpoint in datapath.State.PodMTU.
func EndpointKey(ep endpoint.Endpoint) string { return ep.ContainerID + "/" + ep.IfName }

// LoadSaved reads the saved sysctl values.
func (k *Kernel) LoadSaved() (map[string]string, error) {
	out := map[string]string{}
	b, err := os.ReadFile(filepath.Join(k.StateDir, SavedSysctlsFile))
	if errors.Is(err, os.ErrNotExist) {
		return out, nil
	}
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(b, &out); err != nil {
		return nil, fmt.Errorf("%s: %w", SavedSysctlsFile, err)
	}
	return out, nil
}

func (k *Kernel) storeSaved(m map[string]string) error {
	if err := os.MkdirAll(k.StateDir, 0o755); err != nil {
		return err
	}
	path := filepath.Join(k.StateDir, SavedSysctlsFile)
	if len(m) == 0 {
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		return nil
	}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// ApplyEnv is what operations need beyond themselves.
type ApplyEnv struct {
	// RouterIP is the pods' gateway, for pod default routes.
	RouterIP netip.Addr
	// Endpoints by EndpointKey.
	Endpoints map[string]endpoint.Endpoint
	// HostMTU is the MTU of rm_host/rm_net when created.
	HostMTU int
}

// Apply executes ops in order and stops at the first failure; done counts
// the operations completed.
func (k *Kernel) Apply(ctx context.Context, ops []datapath.Op, env ApplyEnv) (done int, err error) {
	links := linkCache{k: k, byName: map[string]netlink.Link{}}
	for _, op := range ops {
		if err := ctx.Err(); err != nil {
			return done, err
		}
		if changesLinks[op.Kind] {
			clear(links.byName)
		}
		if err := k.apply(op, env, &links); err != nil {
			return done, fmt.Errorf("%s: %w", op, err)
		}
		if op.KernelChange() {
			k.Log.Info("Changed kernel state", "op", op.String())
		}
		done++
	}
	return done, nil
}

func (k *Kernel) link(name string) (netlink.Link, error) { return k.H.LinkByName(name) }

// linkCache holds the devices one Apply looked up, by name: with thousands
// of peers, a lookup before each neighbour, FDB entry and route doubled
// the netlink requests. The operations that add, remove or change a
// device empty it (changesLinks); the others only use a device's index.
type linkCache struct {
	k      *Kernel
	byName map[string]netlink.Link
}

func (c *linkCache) get(name string) (netlink.Link, error) {
	if l, ok := c.byName[name]; ok {
		return l, nil
	}
	l, err := c.k.link(name)
	if err == nil {
		c.byName[name] = l
	}
	return l, err
}

var changesLinks = map[datapath.OpKind]bool{
	datapath.OpHostCreate: true, datapath.OpHostUp: true, datapath.OpTunnelCreate: true,
	datapath.OpTunnelRecreate: true, datapath.OpTunnelUpdate: true, datapath.OpTunnelDelete: true,
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), 32)}
}

func (k *Kernel) apply(op datapath.Op, env ApplyEnv, links *linkCache) error {
	switch op.Kind {
	case datapath.OpHostCreate:
		if l, err := k.link(datapath.HostDevice); err == nil {
			if err := k.H.LinkDel(l); err != nil && !nlsafe.IsNotFound(err) {
				return err
			}
		}
		if l, err := k.link(datapath.NetDevice); err == nil {
			if err := k.H.LinkDel(l); err != nil && !nlsafe.IsNotFound(err) {
				return err
			}
		}
		v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: datapath.HostDevice, MTU: env.HostMTU}, PeerName: datapath.NetDevice}
		if err := k.H.LinkAdd(v); err != nil {
			return err
		}
		return k.hostUp()
	case datapath.OpHostUp:
		return k.hostUp()
	case datapath.OpAddrAdd, datapath.OpAddrDel:
		l, err := links.get(op.Dev)
		if err != nil {
			if op.Kind == datapath.OpAddrDel && nlsafe.IsNotFound(err) {
				return nil
			}
			return err
		}
		a := &netlink.Addr{IPNet: ipNet(op.Addr)}
		if op.Kind == datapath.OpAddrAdd {
			return k.H.AddrReplace(l, a)
		}
		if err := k.H.AddrDel(l, a); err != nil && !nlsafe.IsNotFound(err) && !errors.Is(err, unix.EADDRNOTAVAIL) {
			return err
		}
		return nil
	case datapath.OpTunnelCreate, datapath.OpTunnelRecreate:
		if op.Kind == datapath.OpTunnelRecreate {
			if err := k.deleteLink(op.Tunnel.Name); err != nil {
				return err
			}
		}
		return k.createTunnel(op.Tunnel)
	case datapath.OpTunnelUpdate:
		l, err := k.link(op.Tunnel.Name)
		if err != nil {
			return err
		}
		if l.Attrs().MTU != op.Tunnel.MTU {
			if err := k.H.LinkSetMTU(l, op.Tunnel.MTU); err != nil {
				return err
			}
		}
		if l.Attrs().HardwareAddr.String() != op.Tunnel.MAC {
			mac, err := net.ParseMAC(op.Tunnel.MAC)
			if err != nil {
				return err
			}
			if err := k.H.LinkSetHardwareAddr(l, mac); err != nil {
				return err
			}
		}
		return k.H.LinkSetUp(l)
	case datapath.OpTunnelDelete:
		return k.deleteLink(op.Tunnel.Name)
	case datapath.OpSysctl:
		return k.setSysctl(op.Sysctl)
	case datapath.OpSavedForget:
		saved, err := k.LoadSaved()
		if err != nil {
			return err
		}
		delete(saved, op.Sysctl.Key)
		return k.storeSaved(saved)
	case datapath.OpPodRoute:
		ep, ok := env.Endpoints[op.PodRoute.Key]
		if !ok {
			return fmt.Errorf("unknown endpoint %s", op.PodRoute.Key)
		}
		// The device gone, or going (down), meanwhile is the pod gone:
		// nothing to route.
		err := k.H.RouteReplace(podnet.HostRoute(op.PodRoute.IP, ep.LXCIndex))
		if errors.Is(err, unix.ENETDOWN) {
			return nil
		}
		return ignoreGone(err)
	case datapath.OpPodMTU:
		ep, ok := env.Endpoints[op.Pod.Key]
		if !ok {
			return fmt.Errorf("unknown endpoint %s", op.Pod.Key)
		}
		return podnet.SetRouteMTU(ep, env.RouterIP, op.Pod.MTU)
	case datapath.OpNeighSet, datapath.OpNeighDel:
		l, err := links.get(op.Neigh.Dev)
		if err != nil {
			if op.Kind == datapath.OpNeighDel && nlsafe.IsNotFound(err) {
				return nil
			}
			return err
		}
		mac, err := net.ParseMAC(op.Neigh.MAC)
		if err != nil {
			return err
		}
		n := &netlink.Neigh{LinkIndex: l.Attrs().Index, Family: unix.AF_INET, State: netlink.NUD_PERMANENT,
			Type: unix.RTN_UNICAST, IP: net.IP(op.Neigh.IP.AsSlice()), HardwareAddr: mac}
		if op.Kind == datapath.OpNeighSet {
			return k.H.NeighSet(n)
		}
		return ignoreGone(k.H.NeighDel(n))
	case datapath.OpFDBSet, datapath.OpFDBDel:
		l, err := links.get(op.FDB.Dev)
		if err != nil {
			if op.Kind == datapath.OpFDBDel && nlsafe.IsNotFound(err) {
				return nil
			}
			return err
		}
		mac, err := net.ParseMAC(op.FDB.MAC)
		if err != nil {
			return err
		}
		n := &netlink.Neigh{LinkIndex: l.Attrs().Index, Family: unix.AF_BRIDGE, State: netlink.NUD_PERMANENT,
			Flags: netlink.NTF_SELF, IP: net.IP(op.FDB.Dst.AsSlice()), HardwareAddr: mac}
		if op.Kind == datapath.OpFDBSet {
			return k.H.NeighSet(n)
		}
		return ignoreGone(k.H.NeighDel(n))
	case datapath.OpRouteReplace:
		l, err := links.get(op.Route.Dev)
		if err != nil {
			return err
		}
		return k.H.RouteReplace(nlRoute(op.Route, l.Attrs().Index))
	case datapath.OpRouteDel:
		r := &netlink.Route{Dst: ipNet(op.Route.Dst), Protocol: datapath.RouteProtocol, Table: unix.RT_TABLE_MAIN}
		return ignoreGone(k.H.RouteDel(r))
	}
	return fmt.Errorf("unknown operation %q", op.Kind)
}

func nlRoute(r datapath.Route, linkIndex int) *netlink.Route {
	nr := &netlink.Route{
		Dst:       ipNet(r.Dst),
		Gw:        net.IP(r.Gw.AsSlice()),
		LinkIndex: linkIndex,
		MTU:       r.MTU,
		Protocol:  datapath.RouteProtocol,
		Table:     unix.RT_TABLE_MAIN,
		Scope:     netlink.SCOPE_UNIVERSE,
	}
	if r.OnLink {
		nr.Flags = int(netlink.FLAG_ONLINK)
	}
	return nr
}

func (k *Kernel) hostUp() error {
	for _, name := range []string{datapath.NetDevice, datapath.HostDevice} {
		l, err := k.link(name)
		if err != nil {
			return err
		}
		if err := k.H.LinkSetUp(l); err != nil {
			return err
		}
	}
	return nil
}

func (k *Kernel) createTunnel(t datapath.Tunnel) error {
	under, err := k.link(t.Underlay)
	if err != nil {
		return fmt.Errorf("underlay %s: %w", t.Underlay, err)
	}
	mac, err := net.ParseMAC(t.MAC)
	if err != nil {
		return err
	}
	v := &netlink.Vxlan{
		LinkAttrs:    netlink.LinkAttrs{Name: t.Name, MTU: t.MTU, HardwareAddr: mac},
		VxlanId:      t.VNI,
		VtepDevIndex: under.Attrs().Index,
		SrcAddr:      net.IP(t.Local.AsSlice()),
		Port:         t.Port,
		Learning:     false,
	}
	if err := k.H.LinkAdd(v); err != nil {
		return err
	}
	l, err := k.link(t.Name)
	if err != nil {
		return err
	}
	return k.H.LinkSetUp(l)
}

func (k *Kernel) deleteLink(name string) error {
	l, err := k.link(name)
	if err != nil {
		return ignoreGone(err)
	}
	return ignoreGone(k.H.LinkDel(l))
}

func (k *Kernel) setSysctl(s datapath.Sysctl) error {
	if s.Save {
		saved, err := k.LoadSaved()
		if err != nil {
			return err
		}
		if _, ok := saved[s.Key]; !ok {
			cur, err := k.Sysctls.Read(k.NS, s.Key)
			if err != nil {
				return err
			}
			saved[s.Key] = cur
			if err := k.storeSaved(saved); err != nil {
				return err
			}
		}
	}
	err := k.Sysctls.Write(k.NS, s.Key, s.Value)
	if err != nil && errors.Is(err, os.ErrNotExist) && !s.Save {
		return nil // restoring a device that is gone
	}
	return err
}

func ignoreGone(err error) error {
	if nlsafe.IsNotFound(err) {
		return nil
	}
	return err
}
