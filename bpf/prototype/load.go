//go:build linux

/*
Copyright 2026 The routemode Authors.

Licensed under the Apache License, Version 2.0.
*/

package prototype

import (
	"fmt"
	"net"
	"net/netip"
)

// Objects are the prototype's programs and maps.
type Objects = prototypeObjects

// Load loads a fresh, unpinned copy: one per node, as each node's pod map
// is its own.
func Load() (*Objects, error) {
	var o Objects
	if err := loadPrototypeObjects(&o, nil); err != nil {
		return nil, fmt.Errorf("load the prototype: %w", err)
	}
	return &o, nil
}

// AddPod puts a local pod into the node's pod map.
func (o *Objects) AddPod(ip netip.Addr, lxcIndex int, podMAC, lxcMAC net.HardwareAddr) error {
	if !ip.Is4() || len(podMAC) != 6 || len(lxcMAC) != 6 {
		return fmt.Errorf("prototype pod %s: want an IPv4 address and Ethernet MACs, got %q and %q", ip, podMAC, lxcMAC)
	}
	key := ip.As4() // the program reads the address in network order
	return o.ProtoPods.Put(key, prototypePod{Ifindex: uint32(lxcIndex), Mac: [6]byte(podMAC), LxcMac: [6]byte(lxcMAC)})
}

// Redirects sums the packets each program redirected, over CPUs.
func (o *Objects) Redirects() (fromNetdev, fromLXC uint64, err error) {
	var sums [2]uint64
	for slot := range sums {
		var perCPU []uint64
		if err := o.ProtoRedirects.Lookup(uint32(slot), &perCPU); err != nil {
			return 0, 0, err
		}
		for _, n := range perCPU {
			sums[slot] += n
		}
	}
	return sums[0], sums[1], nil
}
