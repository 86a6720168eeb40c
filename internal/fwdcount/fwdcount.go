//go:build linux

/*
Copyright 2026 The routemode Authors.

Licensed under the Apache License, Version 2.0.
*/

// Package fwdcount counts the packets a netfilter hook sees in a network
// namespace: the tests' proof of whether traffic takes the host stack's
// forwarding path, which eBPF host routing bypasses, and a counted drop
// that stands for an underlay refusing unencapsulated pod traffic.
package fwdcount

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netns"
)

// Table is the nftables table a Counter owns.
const Table = "rm_test_fwdcount"

// Counter is a counting rule in a base chain of its own table: the forward
// hook's `ip saddr <prefix> counter` (Start), or a prerouting rule that
// counts and drops (DropPlain).
type Counter struct {
	nsPath string
	table  *nftables.Table
	chain  *nftables.Chain
}

// Start installs a Counter for packets from src in the namespace at nsPath.
func Start(nsPath string, src netip.Prefix) (*Counter, error) {
	if !src.Addr().Is4() {
		return nil, fmt.Errorf("forward counter: %s is not an IPv4 prefix", src)
	}
	c, err := install(nsPath, nftables.ChainHookForward, nftables.ChainPriorityFilter, append(prefixMatch(12, src), &expr.Counter{}))
	if err != nil {
		return nil, fmt.Errorf("nftables forward counter in %s: %w", nsPath, err)
	}
	return c, nil
}

// DropPlain makes the namespace at nsPath drop, and count, packets for dst
// that arrive on device iif unencapsulated: VXLAN packets are addressed to
// the node, not to dst. It acts in the prerouting hook, before routing and
// local delivery: a node's underlay that refuses pod-addressed packets, as
// a cloud's source/destination check does.
func DropPlain(nsPath, iif string, dst netip.Prefix) (*Counter, error) {
	if !dst.Addr().Is4() {
		return nil, fmt.Errorf("drop rule: %s is not an IPv4 prefix", dst)
	}
	name := make([]byte, 16) // IFNAMSIZ, as the kernel compares it
	copy(name, iif)
	exprs := append([]expr.Any{&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1}, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: name}},
		prefixMatch(16, dst)...)
	c, err := install(nsPath, nftables.ChainHookPrerouting, nftables.ChainPriorityRaw, append(exprs, &expr.Counter{}, &expr.Verdict{Kind: expr.VerdictDrop}))
	if err != nil {
		return nil, fmt.Errorf("nftables drop of plain traffic to %s in %s: %w", dst, nsPath, err)
	}
	return c, nil
}

// prefixMatch matches the IPv4 address at offset (12 source, 16
// destination) of the network header against p.
func prefixMatch(offset uint32, p netip.Prefix) []expr.Any {
	addr := p.Masked().Addr().As4()
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: 4},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: net.CIDRMask(p.Bits(), 32), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: addr[:]},
	}
}

// install adds Table with one base chain at hook holding one rule.
func install(nsPath string, hook *nftables.ChainHook, prio *nftables.ChainPriority, exprs []expr.Any) (*Counter, error) {
	c := &Counter{nsPath: nsPath}
	err := c.do(func(conn *nftables.Conn) error {
		c.table = conn.AddTable(&nftables.Table{Family: nftables.TableFamilyIPv4, Name: Table})
		policy := nftables.ChainPolicyAccept
		c.chain = conn.AddChain(&nftables.Chain{Name: "counted", Table: c.table, Type: nftables.ChainTypeFilter,
			Hooknum: hook, Priority: prio, Policy: &policy})
		conn.AddRule(&nftables.Rule{Table: c.table, Chain: c.chain, Exprs: exprs})
		return conn.Flush()
	})
	return c, err
}

// Remove deletes the Counter's table, and its rule with it.
func (c *Counter) Remove() error {
	return c.do(func(conn *nftables.Conn) error {
		conn.DelTable(c.table)
		return conn.Flush()
	})
}

// do runs fn with an nftables connection inside the counter's namespace.
func (c *Counter) do(fn func(*nftables.Conn) error) error {
	ns, err := netns.GetFromPath(c.nsPath)
	if err != nil {
		return err
	}
	defer ns.Close()
	conn, err := nftables.New(nftables.WithNetNSFd(int(ns)))
	if err != nil {
		return err
	}
	return fn(conn)
}

// Packets reads the rule's packet count.
func (c *Counter) Packets() (uint64, error) {
	var n uint64
	err := c.do(func(conn *nftables.Conn) error {
		rules, err := conn.GetRules(c.table, c.chain)
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
