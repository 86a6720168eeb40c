// Package masq masquerades pod traffic that leaves the pod network: packets
// from the node's podCIDR to destinations outside the exempt CIDR
// (nativeRoutingCIDR, or the node's podCIDR when that is empty) that leave
// through the underlay device get the node IP as source. Traffic inside the
// exempt CIDR is never masqueraded, and tunnel traffic leaves through the
// tunnel device, never matching.
//
// The rule lives in an nftables table of its own, "ip routemode", chain
// "postrouting" (nat, hook postrouting, priority srcnat), written with
// github.com/google/nftables (no nft or iptables binary is needed). The
// rule carries a fingerprint of its parameters as user data, so Ensure
// reads it back and changes nothing when it is already right; otherwise it
// replaces the whole table in one atomic transaction.
package masq

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

const (
	// Table and Chain name routemode's nftables objects.
	Table = "routemode"
	Chain = "postrouting"
)

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
}

func (c Config) fingerprint() string {
	return fmt.Sprintf("routemode/v1 saddr=%s daddr!=%s oif=%s snat=%s", c.PodCIDR.Masked(), c.Exempt.Masked(), c.Underlay, c.NodeIP)
}

// Masq manages the table in one namespace.
type Masq struct {
	// NetNSFd is the namespace to work in; -1 means the caller's.
	NetNSFd int
}

func (m Masq) conn() (*nftables.Conn, error) {
	if m.NetNSFd >= 0 {
		return nftables.New(nftables.WithNetNSFd(m.NetNSFd))
	}
	return nftables.New()
}

var table = &nftables.Table{Family: nftables.TableFamilyIPv4, Name: Table}

// Current returns the fingerprint of the installed rule, "" if none.
func (m Masq) Current() (string, error) {
	c, err := m.conn()
	if err != nil {
		return "", err
	}
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

// Ensure installs the rule for cfg; changed is false when it was already
// there.
func (m Masq) Ensure(cfg Config) (changed bool, err error) {
	if !cfg.PodCIDR.Addr().Is4() || !cfg.Exempt.Addr().Is4() || !cfg.NodeIP.Is4() || cfg.Underlay == "" {
		return false, fmt.Errorf("incomplete masquerade config %+v", cfg)
	}
	cur, err := m.Current()
	if err != nil {
		return false, err
	}
	if cur == cfg.fingerprint() {
		return false, nil
	}
	c, err := m.conn()
	if err != nil {
		return false, err
	}
	if cur != "" {
		c.DelTable(table)
	} else if _, err := c.ListTableOfFamily(Table, nftables.TableFamilyIPv4); err == nil {
		c.DelTable(table) // a table without our chain or rule
	}
	c.AddTable(table)
	ch := c.AddChain(&nftables.Chain{
		Name:     Chain,
		Table:    table,
		Type:     nftables.ChainTypeNAT,
		Hooknum:  nftables.ChainHookPostrouting,
		Priority: nftables.ChainPriorityNATSource,
	})
	c.AddRule(&nftables.Rule{Table: table, Chain: ch, Exprs: exprs(cfg), UserData: []byte(cfg.fingerprint())})
	if err := c.Flush(); err != nil {
		return false, fmt.Errorf("writing nftables table %s: %w", Table, err)
	}
	return true, nil
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

func exprs(cfg Config) []expr.Any {
	node := cfg.NodeIP.As4()
	var e []expr.Any
	e = append(e, prefixMatch(12, cfg.PodCIDR, expr.CmpOpEq)...)
	e = append(e, prefixMatch(16, cfg.Exempt, expr.CmpOpNeq)...)
	e = append(e,
		&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(cfg.Underlay)},
		&expr.Counter{},
		&expr.Immediate{Register: 1, Data: node[:]},
		&expr.NAT{Type: expr.NATTypeSourceNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1},
	)
	return e
}
