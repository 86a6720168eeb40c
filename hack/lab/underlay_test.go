package lab

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netns"

	"github.com/routemode/routemode/internal/netlab"
)

// underlayDrop is a node's nftables table that drops pod-addressed packets
// arriving unencapsulated on its underlay device, counting them.
type underlayDrop struct {
	nsPath string
	table  *nftables.Table
	chain  *nftables.Chain
}

// dropPlainPodTraffic makes the underlay of the node at nsPath drop
// packets for podCIDR that are not VXLAN-encapsulated (encapsulated ones
// are addressed to the node, not to a pod), in the prerouting hook, before
// routing and local delivery.
func dropPlainPodTraffic(nsPath string, podCIDR netip.Prefix) (*underlayDrop, error) {
	d := &underlayDrop{nsPath: nsPath}
	err := d.do(func(conn *nftables.Conn) error {
		d.table = conn.AddTable(&nftables.Table{Family: nftables.TableFamilyIPv4, Name: "routemode_lab_fault"})
		policy := nftables.ChainPolicyAccept
		d.chain = conn.AddChain(&nftables.Chain{Name: "prerouting", Table: d.table, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityRaw, Policy: &policy})
		ifname := make([]byte, 16)
		copy(ifname, netlab.UnderlayDev)
		dst := podCIDR.Masked().Addr().As4()
		conn.AddRule(&nftables.Rule{Table: d.table, Chain: d.chain, Exprs: []expr.Any{
			&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: net.CIDRMask(podCIDR.Bits(), 32), Xor: make([]byte, 4)},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: dst[:]},
			&expr.Counter{},
			&expr.Verdict{Kind: expr.VerdictDrop},
		}})
		return conn.Flush()
	})
	if err != nil {
		return nil, fmt.Errorf("nftables drop of plain traffic to %s in %s: %w", podCIDR, nsPath, err)
	}
	return d, nil
}

func (d *underlayDrop) do(fn func(*nftables.Conn) error) error {
	ns, err := netns.GetFromPath(d.nsPath)
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

// Packets is how many packets the rule dropped.
func (d *underlayDrop) Packets() (uint64, error) {
	var n uint64
	err := d.do(func(conn *nftables.Conn) error {
		rules, err := conn.GetRules(d.table, d.chain)
		for _, r := range rules {
			for _, e := range r.Exprs {
				if c, ok := e.(*expr.Counter); ok {
					n += c.Packets
				}
			}
		}
		return err
	})
	return n, err
}

// Remove deletes the table, and the rule with it.
func (d *underlayDrop) Remove() error {
	return d.do(func(conn *nftables.Conn) error {
		conn.DelTable(d.table)
		return conn.Flush()
	})
}
