//go:build linux

/*
Copyright 2026 The routemode Authors.

Licensed under the Apache License, Version 2.0.
*/

package hrlab

import (
	"encoding/binary"
	"fmt"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

const (
	countTable = "rm_test_count"
	kubeTable  = "rm_test_kubeproxy"
)

// withNFT runs fn with an nftables connection inside the node's namespace.
func (n *Node) withNFT(fn func(c *nftables.Conn) error) error {
	ns, err := netns.GetFromPath(n.NSPath)
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

// podSourceMatch matches IPv4 packets from the lab's pod range 10.0.0.0/16.
func podSourceMatch() []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: []byte{255, 255, 0, 0}, Xor: []byte{0, 0, 0, 0}},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{10, 0, 0, 0}},
	}
}

// ForwardCounter is a rule in the node's forward hook that counts pod
// packets: proof of whether pod traffic traverses netfilter.
type ForwardCounter struct {
	node  *Node
	table *nftables.Table
	chain *nftables.Chain
}

// CountForward installs the counting rule `ip saddr 10.0.0.0/16 counter`
// in a forward-hook chain of its own table.
func (n *Node) CountForward() (*ForwardCounter, error) {
	fc := &ForwardCounter{node: n}
	err := n.withNFT(func(c *nftables.Conn) error {
		fc.table = c.AddTable(&nftables.Table{Family: nftables.TableFamilyIPv4, Name: countTable})
		policy := nftables.ChainPolicyAccept
		fc.chain = c.AddChain(&nftables.Chain{
			Name: "forward", Table: fc.table, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &policy,
		})
		c.AddRule(&nftables.Rule{Table: fc.table, Chain: fc.chain, Exprs: append(podSourceMatch(), &expr.Counter{})})
		return c.Flush()
	})
	if err != nil {
		return nil, fmt.Errorf("%s: nftables forward counter: %w", n.Name, err)
	}
	return fc, nil
}

// Packets reads the rule's packet count.
func (fc *ForwardCounter) Packets() (uint64, error) {
	var n uint64
	err := fc.node.withNFT(func(c *nftables.Conn) error {
		rules, err := c.GetRules(fc.table, fc.chain)
		if err != nil {
			return err
		}
		for _, r := range rules {
			for _, e := range r.Exprs {
				if ctr, ok := e.(*expr.Counter); ok {
					n += ctr.Packets
				}
			}
		}
		return nil
	})
	return n, err
}

// Remove deletes the counting table.
func (fc *ForwardCounter) Remove() error {
	return fc.node.withNFT(func(c *nftables.Conn) error {
		c.DelTable(fc.table)
		return c.Flush()
	})
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

// KubeProxyRuleset installs, in the node's namespace, a ruleset shaped like
// kube-proxy's for opts.Services services: a service chain of non-matching
// ClusterIP:port rules reached from a nat prerouting chain (and, with
// PerPacket, from a filter prerouting chain too), and a forward chain with
// `ct state invalid drop` and `ct state established,related accept` (which
// also turns connection tracking on for every packet).
func (n *Node) KubeProxyRuleset(opts KubeProxyOptions) error {
	err := n.withNFT(func(c *nftables.Conn) error {
		t := c.AddTable(&nftables.Table{Family: nftables.TableFamilyIPv4, Name: kubeTable})
		accept := nftables.ChainPolicyAccept
		svc := c.AddChain(&nftables.Chain{Name: "services", Table: t})
		nat := c.AddChain(&nftables.Chain{
			Name: "nat-prerouting", Table: t, Type: nftables.ChainTypeNAT,
			Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityNATDest, Policy: &accept,
		})
		fwd := c.AddChain(&nftables.Chain{
			Name: "forward", Table: t, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &accept,
		})
		jump := []expr.Any{&expr.Verdict{Kind: expr.VerdictJump, Chain: svc.Name}}
		c.AddRule(&nftables.Rule{Table: t, Chain: nat, Exprs: jump})
		if opts.PerPacket {
			pre := c.AddChain(&nftables.Chain{
				Name: "filter-prerouting", Table: t, Type: nftables.ChainTypeFilter,
				Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityMangle, Policy: &accept,
			})
			c.AddRule(&nftables.Rule{Table: t, Chain: pre, Exprs: jump})
		}
		c.AddRule(&nftables.Rule{Table: t, Chain: fwd, Exprs: ctState(expr.CtStateBitINVALID, expr.VerdictDrop)})
		c.AddRule(&nftables.Rule{Table: t, Chain: fwd, Exprs: ctState(expr.CtStateBitESTABLISHED|expr.CtStateBitRELATED, expr.VerdictAccept)})
		if err := c.Flush(); err != nil {
			return err
		}
		// Batches of 50 rules: the kernel acknowledges every rule, and a bigger
		// batch overflows the netlink socket with acknowledgements (ENOBUFS).
		for i := range opts.Services {
			ip := [4]byte{10, 96, byte(i >> 8), byte(i)}
			for _, port := range []uint16{80, 443} {
				c.AddRule(&nftables.Rule{Table: t, Chain: svc, Exprs: serviceRule(ip, port)})
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

func ctState(bits uint32, v expr.VerdictKind) []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(bits), Xor: binaryutil.NativeEndian.PutUint32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(0)},
		&expr.Verdict{Kind: v},
	}
}

// serviceRule is `ip daddr <ip> tcp dport <port> accept`, the shape of a
// KUBE-SERVICES entry; it never matches pod-to-pod traffic.
func serviceRule(ip [4]byte, port uint16) []expr.Any {
	p := make([]byte, 2)
	binary.BigEndian.PutUint16(p, port)
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ip[:]},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: p},
		&expr.Verdict{Kind: expr.VerdictAccept},
	}
}
