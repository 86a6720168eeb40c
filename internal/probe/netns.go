// Package probe is a small traffic toolkit for namespaces: a UDP echo
// responder, numbered UDP probe streams that count sent, lost, duplicated
// and reordered probes and the largest gap between answers, a one-shot
// ping for health checks, a long-lived TCP connection checker that counts
// resets, and an AF_PACKET capture that tells encapsulated from plain pod
// packets on a wire.
//
// Every socket is created inside the network namespace given by path (""
// means the caller's) on a locked OS thread; after creation it is an
// ordinary Go socket usable from any goroutine. So a test process drives
// traffic between any number of namespaces at once, without exec.
//
// Senders never block: a probe is sent with one non-blocking attempt, and
// one that cannot be sent counts as sent and lost. Every socket gets a 4 MiB
// receive buffer and reports the datagrams it dropped itself
// (SO_RXQ_OVFL), so the tool's own losses are told from the network's.
package probe

import (
	"context"
	"net"
	"net/netip"

	"github.com/containernetworking/plugins/pkg/ns"
)

// InNS runs fn on a thread in the namespace at nsPath ("" = here).
func InNS(nsPath string, fn func() error) error {
	if nsPath == "" {
		return fn()
	}
	return ns.WithNetNSPath(nsPath, func(ns.NetNS) error { return fn() })
}

// ListenUDP opens a UDP socket bound to addr inside the namespace at nsPath.
func ListenUDP(nsPath string, addr netip.AddrPort) (*net.UDPConn, error) {
	var c *net.UDPConn
	err := InNS(nsPath, func() error {
		var err error
		c, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(addr))
		return err
	})
	if err == nil {
		tune(c)
	}
	return c, err
}

// ListenTCP opens a TCP listener bound to addr inside the namespace at nsPath.
func ListenTCP(nsPath string, addr netip.AddrPort) (*net.TCPListener, error) {
	var l *net.TCPListener
	err := InNS(nsPath, func() error {
		var err error
		l, err = net.ListenTCP("tcp4", net.TCPAddrFromAddrPort(addr))
		return err
	})
	return l, err
}

// DialTCP connects to raddr from inside the namespace at nsPath.
func DialTCP(ctx context.Context, nsPath string, raddr netip.AddrPort) (*net.TCPConn, error) {
	var c net.Conn
	err := InNS(nsPath, func() error {
		var err error
		var d net.Dialer
		c, err = d.DialContext(ctx, "tcp4", raddr.String())
		return err
	})
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}
