//go:build linux

/*
Copyright 2026 The routemode Authors.

Licensed under the Apache License, Version 2.0.
*/

// Package fwdcount counts the packets netfilter's forward hook sees in a
// network namespace: the tests' proof of whether traffic takes the host
// stack's forwarding path, which eBPF host routing bypasses.
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

// Counter is the rule `ip saddr <prefix> counter` in a forward-hook chain
// of its own table.
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
	c := &Counter{nsPath: nsPath}
	err := c.do(func(conn *nftables.Conn) error {
		c.table = conn.AddTable(&nftables.Table{Family: nftables.TableFamilyIPv4, Name: Table})
		policy := nftables.ChainPolicyAccept
		c.chain = conn.AddChain(&nftables.Chain{
			Name: "forward", Table: c.table, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &policy,
		})
		net4 := src.Masked().Addr().As4()
		conn.AddRule(&nftables.Rule{Table: c.table, Chain: c.chain, Exprs: []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: net.CIDRMask(src.Bits(), 32), Xor: make([]byte, 4)},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: net4[:]},
			&expr.Counter{},
		}})
		return conn.Flush()
	})
	if err != nil {
		return nil, fmt.Errorf("nftables forward counter in %s: %w", nsPath, err)
	}
	return c, nil
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
