package netlab

import (
	"context"
	"maps"
	"os"
	"slices"

	"github.com/routemode/routemode/agent/datapath"
	"github.com/routemode/routemode/agent/endpoint"
	"github.com/routemode/routemode/agent/kernel"
	"github.com/routemode/routemode/api/v1alpha1"
)

// ApplyDatapath puts the node's kernel into d as its agent would (rm_host
// with the router IP, the tunnel device with its neighbour and FDB
// entries, routes to the peers, sysctls, the pods' route MTUs) through the
// agent's own datapath model and kernel access, but nothing else: no
// health endpoint, masquerading, CNI configuration or host routing. Every
// other node is a peer on the underlay. It returns the routes to the
// peers it installed.
func (n *Node) ApplyDatapath(ctx context.Context, d v1alpha1.NodeDatapath) ([]datapath.Route, error) {
	var peers []datapath.Node
	for _, p := range n.Lab.Nodes {
		if p != n {
			peers = append(peers, datapath.Node{Name: p.Name, IP: p.IP, PodCIDR: p.PodCIDR})
		}
	}
	return n.ApplyDatapathWith(ctx, d, peers)
}

// ApplyDatapathWith is ApplyDatapath with the given peers, each reached
// directly on the node's underlay device (the scale benchmark's thousands
// of peers that exist only as addresses).
func (n *Node) ApplyDatapathWith(ctx context.Context, d v1alpha1.NodeDatapath, peers []datapath.Node) ([]datapath.Route, error) {
	if err := os.MkdirAll(n.StateDir, 0o700); err != nil {
		return nil, err
	}
	k := &kernel.Kernel{H: n.Handle, NS: n.NS, StateDir: n.StateDir, Log: n.Logger()}
	saved, err := k.LoadSaved()
	if err != nil {
		return nil, err
	}
	in := datapath.Input{
		Spec: d, Self: datapath.Node{Name: n.Name, IP: n.IP, PodCIDR: n.PodCIDR},
		Underlay: n.Underlay, UnderlayMTU: n.Lab.spec.MTU, Saved: saved,
		Kernel: datapath.KernelCaps{VXLAN: true},
	}
	for _, p := range peers {
		in.Peers = append(in.Peers, datapath.Peer{Node: p, VTEPMAC: datapath.VTEPMAC(p.IP), Direct: true, DirectDev: n.Underlay})
	}
	eps := n.Endpoints()
	var byKey map[string]endpoint.Endpoint
	byKey, in.Endpoints = kernel.LocalEndpoints(eps)
	rendered, err := datapath.Render(in)
	if err != nil {
		return nil, err
	}
	keys := slices.Sorted(maps.Keys(rendered.State.Sysctls))
	for k := range saved {
		keys = append(keys, k)
	}
	actual, err := k.Read(kernel.ReadRequest{SysctlKeys: keys, Endpoints: eps})
	if err != nil {
		return nil, err
	}
	ops := datapath.Plan(rendered.State, actual)
	env := kernel.ApplyEnv{RouterIP: datapath.RouterIP(n.PodCIDR), Endpoints: byKey, HostMTU: n.Lab.spec.MTU}
	if _, err := k.Apply(ctx, ops, env); err != nil {
		return nil, err
	}
	return slices.Collect(maps.Values(rendered.State.Routes)), nil
}

// Endpoints are the records of the pods AddPodDirect made.
func (n *Node) Endpoints() []endpoint.Endpoint {
	n.mu.Lock()
	defer n.mu.Unlock()
	var eps []endpoint.Endpoint
	for _, p := range n.Pods {
		if p.Endpoint.LXCName != "" {
			eps = append(eps, p.Endpoint)
		}
	}
	return eps
}
