// Package rollout decides, without any I/O, what each node's datapath must
// be next so that a RoutingMode change reaches every node make-before-break:
// every node receives both ways before any node changes how it sends, nodes
// switch in batches gated on health, and the old mode's state goes last.
//
// The decision is level-based: it is recomputed from the nodes' current
// datapaths on every reconcile, so an operator restart, a node that joins
// mid-rollout or a spec changed mid-rollout need no stored plan.
package rollout

import (
	"k8s.io/utils/ptr"

	"github.com/routemode/routemode/api/v1alpha1"
)

// Steady is the datapath a node runs once spec is fully rolled out.
func Steady(spec v1alpha1.RoutingModeSpec) v1alpha1.NodeDatapath {
	d := v1alpha1.NodeDatapath{
		Tunnel:               spec.Tunnel,
		TunnelPort:           spec.TunnelPort,
		NativeRoutingCIDR:    spec.NativeRoutingCIDR,
		AutoDirectNodeRoutes: spec.AutoDirectNodeRoutes,
		HostRouting:          spec.HostRouting,
		SendMode:             v1alpha1.SendTunnel,
		RouteMTU:             v1alpha1.RouteMTUTunnel,
	}
	if d.TunnelPort == 0 {
		d.TunnelPort = v1alpha1.DefaultTunnelPort
	}
	if d.HostRouting == "" {
		d.HostRouting = v1alpha1.HostRoutingLegacy
	}
	if d.Tunnel == "" {
		d.Tunnel = v1alpha1.TunnelVXLAN
	}
	if d.Tunnel == v1alpha1.TunnelDisabled {
		d.SendMode = v1alpha1.SendNative
		d.RouteMTU = v1alpha1.RouteMTUFull
	}
	return d
}

// receive is what every node must accept while a routing change is under
// way: the union of what any node may send.
type receive struct {
	tunnel v1alpha1.Tunnel
	port   int32
	mtu    v1alpha1.RouteMTU
}

// unionReceive is the tunnel every node must keep while some node may still
// send through it or already does: the target's tunnel if it has one,
// otherwise the tunnel any node still holds.
func unionReceive(target v1alpha1.NodeDatapath, current []*v1alpha1.NodeDatapath) receive {
	r := receive{tunnel: target.Tunnel, port: target.TunnelPort}
	if r.tunnel == v1alpha1.TunnelDisabled {
		for _, c := range current {
			if c != nil && c.Tunnel != v1alpha1.TunnelDisabled {
				r.tunnel, r.port = c.Tunnel, c.TunnelPort
				break
			}
		}
	}
	r.mtu = v1alpha1.RouteMTUFull
	if r.tunnel != v1alpha1.TunnelDisabled {
		// Lower before anyone encapsulates, raise only once nobody can.
		r.mtu = v1alpha1.RouteMTUTunnel
	}
	return r
}

// routingChanges reports whether moving c to target changes how packets
// cross the underlay, which needs the three-step protocol. A change of host
// routing or of the masquerade CIDR alone does not: peers interoperate
// whichever way a node forwards locally.
func routingChanges(c *v1alpha1.NodeDatapath, target v1alpha1.NodeDatapath) bool {
	if c == nil {
		return false
	}
	return c.Tunnel != target.Tunnel || c.TunnelPort != target.TunnelPort ||
		c.SendMode != target.SendMode || c.RouteMTU != target.RouteMTU ||
		c.AutoDirectNodeRoutes != target.AutoDirectNodeRoutes || c.LooseRPFilter
}

// receiveReady reports whether c accepts everything any node may send.
func receiveReady(c *v1alpha1.NodeDatapath, r receive) bool {
	return c != nil && c.Tunnel == r.tunnel && c.TunnelPort == r.port && c.RouteMTU == r.mtu && c.LooseRPFilter
}

// prepared keeps how c sends and makes it receive both ways.
func prepared(c v1alpha1.NodeDatapath, r receive, target v1alpha1.NodeDatapath) v1alpha1.NodeDatapath {
	p := c
	p.Tunnel, p.TunnelPort, p.RouteMTU, p.LooseRPFilter = r.tunnel, r.port, r.mtu, true
	if target.NativeRoutingCIDR != "" {
		p.NativeRoutingCIDR = target.NativeRoutingCIDR
	}
	return p
}

// switched sends the target's way while still receiving both ways.
func switched(r receive, target v1alpha1.NodeDatapath) v1alpha1.NodeDatapath {
	s := target
	s.Tunnel, s.TunnelPort, s.RouteMTU, s.LooseRPFilter = r.tunnel, r.port, r.mtu, true
	return s
}

// sendsLike reports whether c sends the way target does.
func sendsLike(c *v1alpha1.NodeDatapath, target v1alpha1.NodeDatapath) bool {
	return c != nil && c.SendMode == target.SendMode && c.AutoDirectNodeRoutes == target.AutoDirectNodeRoutes &&
		c.HostRouting == target.HostRouting && c.NativeRoutingCIDR == target.NativeRoutingCIDR
}

// Equal compares two datapaths, nil meaning none.
func Equal(a, b *v1alpha1.NodeDatapath) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}

func autoRollback(spec v1alpha1.RoutingModeSpec) bool {
	return ptr.Deref(spec.Rollout.AutoRollback, true)
}
