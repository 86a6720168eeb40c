// Package masq masquerades pod traffic that leaves the pod network: packets
// from the node's podCIDR to destinations outside the exempt CIDR
// (nativeRoutingCIDR, or the node's podCIDR when that is empty) that leave
// through the underlay device get the node IP as source. Traffic inside the
// exempt CIDR is never masqueraded, and tunnel traffic leaves through the
// tunnel device, never matching.
//
// Nor is traffic to the cluster's nodes (their InternalIPs, set "nodes"),
// as Cilium leaves out its cilium_node_set_v4: a node sees the pod's own
// address, and, above all, a pod's reply to a node that connected to it is
// never rewritten. With eBPF host routing the node's ingress program
// delivers that node's packets straight into the pod, so conntrack first
// sees the connection in the pod's replies, takes them for a new flow, and
// without the exemption masquerades them: the node that connected sees
// answers from the wrong address and resets. kube-proxy forwarding a
// NodePort to a pod on another node after masquerading it to its own IP,
// host-network pods and the API server all connect that way.
//
// Everything lives in an nftables table of its own, "ip routemode": chain
// "postrouting" (nat, hook postrouting, priority srcnat) with the one rule,
// and the set, written with github.com/google/nftables (no nft or iptables
// binary is needed). The rule carries a fingerprint of its parameters as
// user data, so Ensure reads it back and, when it is right, only adds and
// removes the set's members that changed, in one transaction; when it is
// not, Ensure replaces the whole table, set included, in one transaction.
package masq

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

const (
	// Table, Chain and NodeSet name routemode's nftables objects.
	Table   = "routemode"
	Chain   = "postrouting"
	NodeSet = "nodes"
)

// elementsPerMessage bounds one netlink message's set elements: the
// element list is one attribute, whose length is 16 bits, and an IPv4
// element takes 16 bytes of it.
const elementsPerMessage = 2048

// Config is what the masquerade rule needs.
type Config struct {
	// PodCIDR is the node's pod CIDR: the sources masqueraded.
	PodCIDR netip.Prefix
	// Exempt is never masqueraded as a destination.
	Exempt netip.Prefix
	// Underlay is the device traffic leaves by.
	Underlay string
	// NodeIP is the address sources are rewritten to.
	NodeIP netip.Addr
	// Nodes are the cluster's nodes' IPv4 InternalIPs, never masqueraded
	// as destinations either. They are the set's members, not part of
	// the rule: a node joining or leaving changes only them.
	Nodes []netip.Addr
}

func (c Config) validate() error {
	if !c.PodCIDR.Addr().Is4() || !c.Exempt.Addr().Is4() || !c.NodeIP.Is4() || c.Underlay == "" {
		return fmt.Errorf("incomplete masquerade config %+v: podCIDR, exempt CIDR and node IP must be IPv4 and the underlay named", c)
	}
	for _, n := range c.Nodes {
		if !n.Is4() {
			return fmt.Errorf("node address %q cannot join the IPv4 masquerade exemption: pass only nodes' IPv4 InternalIPs", n)
		}
	}
	return nil
}

func (c Config) fingerprint() string {
	return fmt.Sprintf("routemode/v2 saddr=%s daddr!=%s daddr!=@%s oif=%s snat=%s", c.PodCIDR.Masked(), c.Exempt.Masked(), NodeSet, c.Underlay, c.NodeIP)
}

// Masq manages the table in one namespace.
type Masq struct {
	// NetNSFd is the namespace to work in; -1 means the caller's.
	NetNSFd int
}

func (m Masq) conn() (*nftables.Conn, error) {
	opts := []nftables.ConnOption{nftables.WithSockOptions(forceSendBuffer)}
	if m.NetNSFd >= 0 {
		opts = append(opts, nftables.WithNetNSFd(m.NetNSFd))
	}
	return nftables.New(opts...)
}

// sendBuffer holds a table rewrite's batch, 16 bytes a node: 4 MiB is
// room for 250,000 nodes. The socket's default (net.core.wmem_default,
// 208 KiB) overflows with EMSGSIZE between 10,000 nodes, measured to
// fit, and 15,000, measured not to.
const sendBuffer = 4 << 20

// forceSendBuffer sets the socket's send buffer past net.core.wmem_max
// with SO_SNDBUFFORCE, which needs CAP_NET_ADMIN: the agent has it.
func forceSendBuffer(c *netlink.Conn) error {
	raw, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, sendBuffer)
	}); err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("setting the nftables socket's send buffer to %d bytes: %w", sendBuffer, serr)
	}
	return nil
}

var (
	table   = &nftables.Table{Family: nftables.TableFamilyIPv4, Name: Table}
	nodeSet = &nftables.Set{Table: table, Name: NodeSet, KeyType: nftables.TypeIPAddr}
)

// Current returns the fingerprint of the installed rule, "" if none.
func (m Masq) Current() (string, error) {
	c, err := m.conn()
	if err != nil {
		return "", err
	}
	return current(c)
}

func current(c *nftables.Conn) (string, error) {
	if _, err := c.ListTableOfFamily(Table, nftables.TableFamilyIPv4); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return "", nil
		}
		return "", fmt.Errorf("listing nftables table %s: %w", Table, err)
	}
	rules, err := c.GetRules(table, &nftables.Chain{Name: Chain, Table: table})
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return "", nil
		}
		return "", fmt.Errorf("listing rules of %s/%s: %w", Table, Chain, err)
	}
	if len(rules) != 1 {
		return fmt.Sprintf("%d rules", len(rules)), nil
	}
	return string(rules[0].UserData), nil
}

// members reads the node set; nil, nil when there is none.
func members(c *nftables.Conn) (map[netip.Addr]bool, error) {
	// GetSetElements loses the errno (it wraps with %v): ask for the set
	// first to tell a missing one.
	if _, err := c.GetSetByName(table, NodeSet); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil, nil
		}
		return nil, fmt.Errorf("reading set %s/%s: %w", Table, NodeSet, err)
	}
	elems, err := c.GetSetElements(nodeSet)
	if err != nil {
		return nil, fmt.Errorf("listing set %s/%s: %w", Table, NodeSet, err)
	}
	have := make(map[netip.Addr]bool, len(elems))
	for _, e := range elems {
		a, ok := netip.AddrFromSlice(e.Key)
		if !ok || !a.Is4() {
			return nil, fmt.Errorf("set %s/%s holds %x, not an IPv4 address", Table, NodeSet, e.Key)
		}
		have[a] = true
	}
	return have, nil
}

// Ensure installs the rule and the node set for cfg and returns what it
// changed, one line each; none when everything was already right.
func (m Masq) Ensure(cfg Config) ([]string, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	want := make(map[netip.Addr]bool, len(cfg.Nodes))
	for _, n := range cfg.Nodes {
		want[n] = true
	}
	c, err := m.conn()
	if err != nil {
		return nil, err
	}
	cur, err := current(c)
	if err != nil {
		return nil, err
	}
	if cur == cfg.fingerprint() {
		have, err := members(c)
		if err != nil {
			return nil, err
		}
		if have != nil {
			return updateMembers(c, have, want)
		}
	}
	if cur != "" {
		c.DelTable(table)
	} else if _, err := c.ListTableOfFamily(Table, nftables.TableFamilyIPv4); err == nil {
		c.DelTable(table) // a table without our chain or rule
	}
	c.AddTable(table)
	set := *nodeSet
	if err := c.AddSet(&set, nil); err != nil {
		return nil, fmt.Errorf("adding set %s/%s: %w", Table, NodeSet, err)
	}
	if err := setElements(c.SetAddElements, &set, slices.Collect(maps.Keys(want))); err != nil {
		return nil, err
	}
	ch := c.AddChain(&nftables.Chain{
		Name:     Chain,
		Table:    table,
		Type:     nftables.ChainTypeNAT,
		Hooknum:  nftables.ChainHookPostrouting,
		Priority: nftables.ChainPriorityNATSource,
	})
	c.AddRule(&nftables.Rule{Table: table, Chain: ch, Exprs: exprs(cfg, &set), UserData: []byte(cfg.fingerprint())})
	if err := c.Flush(); err != nil {
		return nil, fmt.Errorf("writing nftables table %s: %w", Table, err)
	}
	return []string{fmt.Sprintf("nftables ip %s: masquerade %s to %s via %s unless to %s or one of %d nodes",
		Table, cfg.PodCIDR.Masked(), cfg.NodeIP, cfg.Underlay, cfg.Exempt.Masked(), len(want))}, nil
}

// updateMembers adds and removes the set's members that differ from want,
// in one transaction.
func updateMembers(c *nftables.Conn, have, want map[netip.Addr]bool) ([]string, error) {
	var add, del []netip.Addr
	for a := range want {
		if !have[a] {
			add = append(add, a)
		}
	}
	for a := range have {
		if !want[a] {
			del = append(del, a)
		}
	}
	if len(add) == 0 && len(del) == 0 {
		return nil, nil
	}
	if err := setElements(c.SetAddElements, nodeSet, add); err != nil {
		return nil, err
	}
	if err := setElements(c.SetDeleteElements, nodeSet, del); err != nil {
		return nil, err
	}
	if err := c.Flush(); err != nil {
		return nil, fmt.Errorf("updating set %s/%s: %w", Table, NodeSet, err)
	}
	return []string{fmt.Sprintf("nftables ip %s: set %s +%d -%d, %d nodes not masqueraded to", Table, NodeSet, len(add), len(del), len(want))}, nil
}

// setElements queues op (add or delete) for addrs, sorted, in messages of
// at most elementsPerMessage elements.
func setElements(op func(*nftables.Set, []nftables.SetElement) error, s *nftables.Set, addrs []netip.Addr) error {
	slices.SortFunc(addrs, netip.Addr.Compare)
	for chunk := range slices.Chunk(addrs, elementsPerMessage) {
		elems := make([]nftables.SetElement, len(chunk))
		for i, a := range chunk {
			elems[i] = nftables.SetElement{Key: a.AsSlice()}
		}
		if err := op(s, elems); err != nil {
			return fmt.Errorf("set %s/%s: %w", Table, NodeSet, err)
		}
	}
	return nil
}

// Delete removes the table; a missing table is fine.
func (m Masq) Delete() error {
	c, err := m.conn()
	if err != nil {
		return err
	}
	if _, err := c.ListTableOfFamily(Table, nftables.TableFamilyIPv4); err != nil {
		return nil
	}
	c.DelTable(table)
	return c.Flush()
}

func prefixMatch(offset uint32, p netip.Prefix, op expr.CmpOp) []expr.Any {
	mask := net.CIDRMask(p.Bits(), 32)
	addr := p.Masked().Addr().As4()
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: 4},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: []byte{0, 0, 0, 0}},
		&expr.Cmp{Op: op, Register: 1, Data: addr[:]},
	}
}

func ifname(n string) []byte {
	b := make([]byte, 16)
	copy(b, n)
	return b
}

func exprs(cfg Config, nodes *nftables.Set) []expr.Any {
	node := cfg.NodeIP.As4()
	var e []expr.Any
	e = append(e, prefixMatch(12, cfg.PodCIDR, expr.CmpOpEq)...)
	e = append(e, prefixMatch(16, cfg.Exempt, expr.CmpOpNeq)...)
	e = append(e,
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
		&expr.Lookup{SourceRegister: 1, SetName: nodes.Name, SetID: nodes.ID, Invert: true},
		&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(cfg.Underlay)},
		&expr.Counter{},
		&expr.Immediate{Register: 1, Data: node[:]},
		&expr.NAT{Type: expr.NATTypeSourceNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1},
	)
	return e
}
