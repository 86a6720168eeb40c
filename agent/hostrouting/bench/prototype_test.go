//go:build linux

/*
Copyright 2026 The routemode Authors.

Licensed under the Apache License, Version 2.0.
*/

package bench

import (
	"net"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/routemode/routemode/agent/bpfhost"
	"github.com/routemode/routemode/agent/nsutil"
	"github.com/routemode/routemode/bpf/prototype"
	"github.com/routemode/routemode/internal/netlab"
)

// attachPrototype loads a node's own copy of the prototype, fills its pod
// map with the node's pod and attaches it as the prototype did: TCX
// ingress of the underlay and of the pod's lxc device. The links are not
// pinned: closing them (at cleanup) detaches.
func (r *rig) attachPrototype(n *netlab.Node) error {
	o, err := prototype.Load()
	if err != nil {
		return err
	}
	r.prototype = append(r.prototype, o)
	pod := bpfhost.Endpoints(n.Endpoints())[0]
	if err := o.AddPod(pod.IP, pod.IfIndex, pod.MAC, pod.NodeMAC); err != nil {
		return err
	}
	// TCX resolves the ifindex in the calling thread's namespace.
	return nsutil.RunIn(n.Path(), func() error {
		ul, err := net.InterfaceByName(netlab.UnderlayDev)
		if err != nil {
			return err
		}
		for _, a := range []struct {
			ifindex int
			prog    *ebpf.Program
		}{{ul.Index, o.ProtoFromNetdev}, {pod.IfIndex, o.ProtoFromLxc}} {
			l, err := link.AttachTCX(link.TCXOptions{Interface: a.ifindex, Program: a.prog, Attach: ebpf.AttachTCXIngress})
			if err != nil {
				return err
			}
			r.prototype = append(r.prototype, l)
		}
		return nil
	})
}
