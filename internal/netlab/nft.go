package netlab

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

const (
	kubeTable    = "rm_test_kubeproxy"
	serviceTable = "rm_test_service"
)

// withNFT runs fn with an nftables connection inside the node's namespace.
func (n *Node) withNFT(fn func(c *nftables.Conn) error) error {
	ns, err := netns.GetFromPath(n.Path())
	if err != nil {
		return err
	}
	defer ns.Close()
	c, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		return err
	}
	return fn(c)
}

// KubeProxyOptions size a kube-proxy-like ruleset.
type KubeProxyOptions struct {
	// Services is the number of ClusterIP services; each contributes two
	// non-matching rules (two ports), as KUBE-SERVICES does per service port.
	Services int
	// PerPacket also jumps to the service rules from a filter chain at
	// prerouting, so every packet walks them. Without it the service rules
	// sit in a nat chain, which netfilter consults only for a connection's
	// first packet (iptables and nftables kube-proxy alike); the per-packet
	// cost is then conntrack plus the forward chain's ct state rules.
	PerPacket bool
}

// KubeProxyRuleset installs, in the node's namespace, the ruleset kube-proxy
// (iptables mode, as iptables-nft renders it) keeps for opts.Services
// services, with the chains named as kube-proxy names them:
//
//	nat prerouting  -> KUBE-SERVICES: 2 ClusterIP:port rules per service
//	                   (KUBE-SERVICES-NAT here: one nftables table holds both)
//	nat postrouting -> KUBE-POSTROUTING: masquerade packets marked 0x4000
//	filter forward: ct state new -> KUBE-PROXY-FIREWALL, -> KUBE-FORWARD,
//	                ct state new -> KUBE-SERVICES, ct state new -> KUBE-EXTERNAL-SERVICES
//	KUBE-FORWARD:   ct state invalid drop, mark 0x4000 accept,
//	                ct state related,established accept
//
// Netfilter consults nat chains only for a connection's first packet; every
// packet pays connection tracking and the filter chains. With
// opts.PerPacket a filter prerouting chain also walks KUBE-SERVICES for
// every packet.
func (n *Node) KubeProxyRuleset(opts KubeProxyOptions) error {
	err := n.withNFT(func(c *nftables.Conn) error {
		t := c.AddTable(&nftables.Table{Family: nftables.TableFamilyIPv4, Name: kubeTable})
		accept := nftables.ChainPolicyAccept
		base := func(name string, typ nftables.ChainType, hook *nftables.ChainHook, prio *nftables.ChainPriority) *nftables.Chain {
			return c.AddChain(&nftables.Chain{Name: name, Table: t, Type: typ, Hooknum: hook, Priority: prio, Policy: &accept})
		}
		regular := func(name string) *nftables.Chain { return c.AddChain(&nftables.Chain{Name: name, Table: t}) }
		rule := func(ch *nftables.Chain, exprs ...expr.Any) {
			c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: exprs})
		}
		jump := func(to *nftables.Chain) expr.Any { return &expr.Verdict{Kind: expr.VerdictJump, Chain: to.Name} }

		natSvc, postrouting := regular("KUBE-SERVICES-NAT"), regular("KUBE-POSTROUTING")
		rule(base("nat-prerouting", nftables.ChainTypeNAT, nftables.ChainHookPrerouting, nftables.ChainPriorityNATDest), jump(natSvc))
		rule(base("nat-postrouting", nftables.ChainTypeNAT, nftables.ChainHookPostrouting, nftables.ChainPriorityNATSource), jump(postrouting))
		rule(postrouting, append(markMatch(0), &expr.Verdict{Kind: expr.VerdictReturn})...)
		rule(postrouting, &expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
				Mask: binaryutil.NativeEndian.PutUint32(^uint32(masqMark)), Xor: binaryutil.NativeEndian.PutUint32(masqMark)},
			&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1})
		rule(postrouting, &expr.Masq{})

		firewall, forward, svc, ext := regular("KUBE-PROXY-FIREWALL"), regular("KUBE-FORWARD"), regular("KUBE-SERVICES"), regular("KUBE-EXTERNAL-SERVICES")
		fwd := base("filter-forward", nftables.ChainTypeFilter, nftables.ChainHookForward, nftables.ChainPriorityFilter)
		rule(fwd, ctState(expr.CtStateBitNEW, jump(firewall))...)
		rule(fwd, jump(forward))
		rule(fwd, ctState(expr.CtStateBitNEW, jump(svc))...)
		rule(fwd, ctState(expr.CtStateBitNEW, jump(ext))...)
		rule(forward, ctState(expr.CtStateBitINVALID, &expr.Verdict{Kind: expr.VerdictDrop})...)
		rule(forward, append(markMatch(masqMark), &expr.Verdict{Kind: expr.VerdictAccept})...)
		rule(forward, ctState(expr.CtStateBitESTABLISHED|expr.CtStateBitRELATED, &expr.Verdict{Kind: expr.VerdictAccept})...)
		if opts.PerPacket {
			rule(base("filter-prerouting", nftables.ChainTypeFilter, nftables.ChainHookPrerouting, nftables.ChainPriorityMangle), jump(natSvc))
		}
		if err := c.Flush(); err != nil {
			return err
		}
		// Batches of 50 rules: the kernel acknowledges every rule, and a bigger
		// batch overflows the netlink socket with acknowledgements (ENOBUFS).
		for i := range opts.Services {
			ip := [4]byte{10, 96, byte(i >> 8), byte(i)}
			for _, port := range []uint16{80, 443} {
				rule(natSvc, serviceRule(ip, port)...)
			}
			if i%25 == 24 {
				if err := c.Flush(); err != nil {
					return err
				}
			}
		}
		return c.Flush()
	})
	if err != nil {
		return fmt.Errorf("%s: kube-proxy ruleset: %w", n.Name, err)
	}
	return nil
}

// masqMark is kube-proxy's KUBE-MARK-MASQ bit.
const masqMark = 0x4000

// markMatch is `meta mark & 0x4000 == want`.
func markMatch(want uint32) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(masqMark), Xor: binaryutil.NativeEndian.PutUint32(0)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(want)},
	}
}

// RemoveKubeProxyRuleset deletes the ruleset; a missing one is fine.
func (n *Node) RemoveKubeProxyRuleset() error {
	return n.withNFT(func(c *nftables.Conn) error {
		tables, err := c.ListTablesOfFamily(nftables.TableFamilyIPv4)
		if err != nil {
			return err
		}
		for _, t := range tables {
			if t.Name == kubeTable {
				c.DelTable(t)
			}
		}
		return c.Flush()
	})
}

// ctState is `ct state & bits != 0` followed by then.
func ctState(bits uint32, then expr.Any) []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(bits), Xor: binaryutil.NativeEndian.PutUint32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(0)},
		then,
	}
}

// serviceRule is `ip daddr <ip> tcp dport <port> accept`, the shape of a
// KUBE-SERVICES entry; it never matches pod-to-pod traffic.
func serviceRule(ip [4]byte, port uint16) []expr.Any {
	return append(serviceMatch(ip, unix.IPPROTO_TCP, port), &expr.Verdict{Kind: expr.VerdictAccept})
}

// serviceMatch is `ip daddr <ip> <proto> dport <port>`.
func serviceMatch(ip [4]byte, proto byte, port uint16) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ip[:]},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binary.BigEndian.AppendUint16(nil, port)},
	}
}

// ServiceDNAT makes vip a UDP and TCP Service for backend the way
// kube-proxy does, with a DNAT at prerouting (`ip daddr <vip> udp|tcp dport
// <port> dnat to <backend>`, in a table of its own): conntrack then
// translates the backend's replies back, on this node, to come from vip.
func (n *Node) ServiceDNAT(vip, backend netip.AddrPort) error {
	err := n.withNFT(func(c *nftables.Conn) error {
		t := c.AddTable(&nftables.Table{Family: nftables.TableFamilyIPv4, Name: serviceTable})
		accept := nftables.ChainPolicyAccept
		ch := c.AddChain(&nftables.Chain{Name: "prerouting", Table: t, Type: nftables.ChainTypeNAT,
			Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityNATDest, Policy: &accept})
		ip := backend.Addr().As4()
		for _, proto := range []byte{unix.IPPROTO_UDP, unix.IPPROTO_TCP} {
			c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: append(serviceMatch(vip.Addr().As4(), proto, vip.Port()),
				&expr.Immediate{Register: 1, Data: ip[:]},
				&expr.Immediate{Register: 2, Data: binary.BigEndian.AppendUint16(nil, backend.Port())},
				&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1, RegProtoMin: 2},
			)})
		}
		return c.Flush()
	})
	if err != nil {
		return fmt.Errorf("%s: service %s -> %s: %w", n.Name, vip, backend, err)
	}
	return nil
}
