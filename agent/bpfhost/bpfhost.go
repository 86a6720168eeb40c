//go:build linux

// Package bpfhost plugs the BPF engineer's agent/hostrouting Manager into
// the agent as its node.HostRouter: it converts the agent's endpoint
// records into host-routing endpoints and the agent's view of the node into
// a hostrouting.Config.
package bpfhost

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"slices"

	"github.com/go-logr/logr"

	"github.com/routemode/routemode/agent/datapath"
	"github.com/routemode/routemode/agent/endpoint"
	"github.com/routemode/routemode/agent/hostrouting"
	"github.com/routemode/routemode/agent/node"
	"github.com/routemode/routemode/api/v1alpha1"
)

// Router is a node.HostRouter backed by a hostrouting.Manager.
type Router struct {
	Manager *hostrouting.Manager
	// PinDir is the node's bpffs directory (hostrouting.DefaultPinDir).
	PinDir string
	Log    logr.Logger
}

var _ node.HostRouter = (*Router)(nil)

// New returns a Router pinning under pinDir
// (hostrouting.DefaultPinDir(node)), for the node whose netlink handle is
// opts.Handle and whose namespace is opts.NetNS ("" for the caller's).
func New(pinDir string, opts hostrouting.Options) *Router {
	log := opts.Logger
	if log.GetSink() == nil {
		log = logr.Discard()
	}
	return &Router{Manager: hostrouting.NewManager(opts), PinDir: pinDir, Log: log}
}

// Remove detaches everything and deletes the pin directory (uninstall).
func (r *Router) Remove() error { return r.Manager.Remove(r.PinDir) }

// Capabilities reports the Manager's.
func (r *Router) Capabilities(context.Context) (bool, bool, string) {
	c := r.Manager.Capabilities()
	return c.BPFHostRouting, c.TCX, c.Reason
}

// Apply runs the Manager with the node's devices and endpoints. Endpoints
// it had to skip (a pod going away) are logged, not failed: the next
// reconcile sees the endpoint list without them.
func (r *Router) Apply(ctx context.Context, req node.HostRoutingRequest) (v1alpha1.HostRouting, []string, error) {
	cfg := hostrouting.Config{
		Underlay:          req.Underlay,
		TunnelDevice:      req.TunnelDevice,
		NativeRoutingCIDR: req.NativeRoutingCIDR,
		PinDir:            r.PinDir,
		DirectRoutes:      DirectRoutes(req.Routes, req.Underlay, req.NativeRoutingCIDR),
	}
	changes, err := r.Manager.Apply(ctx, req.Mode, cfg, Endpoints(req.Endpoints))
	if errors.Is(err, hostrouting.ErrEndpointSkipped) {
		r.Log.Info("Skipped endpoints in host routing", "reason", err.Error())
		err = nil
	}
	if err != nil {
		return hostrouting.InForce(r.PinDir), changes, err
	}
	mode := req.Mode
	if mode == "" {
		mode = v1alpha1.HostRoutingLegacy
	}
	return mode, changes, nil
}

// Close releases the Manager; attached programs stay pinned.
func (r *Router) Close() error { return r.Manager.Close() }

// DirectRoutes picks the routes through the underlay to pod CIDRs inside
// the native routing CIDR: the direct routes the programs may use instead of
// a FIB lookup. Tunnel routes stay with the FIB: the tunnel device comes and
// goes with the rollout, the underlay does not.
func DirectRoutes(routes []datapath.Route, underlay string, nativeCIDR netip.Prefix) []hostrouting.DirectRoute {
	var out []hostrouting.DirectRoute
	for _, r := range routes {
		if r.Dev != underlay || !r.Gw.Is4() || !r.Dst.Addr().Is4() || !nativeCIDR.IsValid() ||
			r.Dst.Bits() < nativeCIDR.Bits() || !nativeCIDR.Contains(r.Dst.Addr()) {
			continue
		}
		out = append(out, hostrouting.DirectRoute{Dst: r.Dst.Masked(), Gateway: r.Gw, MTU: r.MTU})
	}
	slices.SortFunc(out, func(a, b hostrouting.DirectRoute) int { return a.Dst.Compare(b.Dst) })
	return out
}

// Endpoints converts endpoint records.
func Endpoints(eps []endpoint.Endpoint) []hostrouting.Endpoint {
	out := make([]hostrouting.Endpoint, 0, len(eps))
	for _, e := range eps {
		podMAC, _ := net.ParseMAC(e.PodMAC)
		lxcMAC, _ := net.ParseMAC(e.LXCMAC)
		out = append(out, hostrouting.Endpoint{
			IP: e.IP, ID: uint32(e.ID), IfIndex: e.LXCIndex, IfName: e.LXCName, MAC: podMAC, NodeMAC: lxcMAC,
		})
	}
	return out
}
