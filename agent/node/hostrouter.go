package node

import (
	"context"
	"errors"
	"net/netip"

	"github.com/routemode/routemode/agent/datapath"
	"github.com/routemode/routemode/agent/endpoint"
	"github.com/routemode/routemode/api/v1alpha1"
)

// HostRouter switches the node between legacy (kernel stack) and eBPF host
// routing. It is the plug for agent/hostrouting, which implements it with
// TCX programs; LegacyHostRouter is the built-in legacy-only
// implementation.
//
// The agent calls Capabilities once at start, for status.capabilities, and
// Apply on every reconcile after the routes, neighbours and MTUs are in
// place, with the complete current input. Apply must be idempotent: when the
// node already runs req.Mode for these endpoints it changes nothing. It
// returns the mode now in force (reported in status.datapath.hostRouting)
// and the changes it made, one line each, for Result.Changes (also those
// made before an error); an error marks DatapathApplied False with reason
// HostRoutingFailed.
type HostRouter interface {
	Capabilities(ctx context.Context) (bpfHostRouting, tcx bool, reason string)
	Apply(ctx context.Context, req HostRoutingRequest) (inForce v1alpha1.HostRouting, changes []string, err error)
}

// HostRoutingRequest is what host routing needs to know about the node.
type HostRoutingRequest struct {
	// Mode is the host routing asked for.
	Mode v1alpha1.HostRouting
	// Underlay is the device towards the peers; TunnelDevice is the VXLAN
	// device, "" when there is none.
	Underlay     string
	TunnelDevice string
	// NativeRoutingCIDR holds every pod address (the node's podCIDR when
	// the spec leaves it empty).
	NativeRoutingCIDR netip.Prefix
	// Endpoints are the local endpoints, the health endpoint included.
	Endpoints []endpoint.Endpoint
	// Routes are the routes to peers' pod CIDRs the agent has just
	// installed, through the tunnel or the underlay.
	Routes []datapath.Route
}

// LegacyHostRouter leaves forwarding to the kernel stack and refuses bpf.
type LegacyHostRouter struct{}

// ErrBPFHostRoutingUnavailable is returned by LegacyHostRouter for bpf.
var ErrBPFHostRoutingUnavailable = errors.New("eBPF host routing is not available in this agent build (no host router plugged in); use hostRouting: legacy")

// Capabilities reports no BPF host routing.
func (LegacyHostRouter) Capabilities(context.Context) (bool, bool, string) {
	return false, false, "no eBPF host router is plugged into this agent"
}

// Apply accepts legacy and refuses bpf.
func (LegacyHostRouter) Apply(_ context.Context, req HostRoutingRequest) (v1alpha1.HostRouting, []string, error) {
	if req.Mode == v1alpha1.HostRoutingBPF {
		return v1alpha1.HostRoutingLegacy, nil, ErrBPFHostRoutingUnavailable
	}
	return v1alpha1.HostRoutingLegacy, nil, nil
}
