package rollout

import (
	"fmt"
	"net/netip"

	"github.com/routemode/routemode/api/v1alpha1"
	"github.com/routemode/routemode/internal/bounded"
)

// PreflightResult is the outcome of the cluster checks. Failed stops the
// rollout before it touches a node; Waiting means a check lacks a report
// from an agent, which holds the rollout for at most the agent timeout.
type PreflightResult struct {
	Failed  bool
	Waiting bool
	Reason  string
	Message string
}

// Preflight reasons.
const (
	ReasonPreflightPassed  = "PreflightPassed"
	ReasonWaitingForAgents = "WaitingForAgents"
	ReasonNodeMissingFacts = "NodeMissingFacts"
	// ReasonNodeJoining is NodeMissingFacts of nodes whose agents have not
	// reported yet: a node registering, whose podCIDR or address is still
	// to come. It waits, for the agent timeout, then is NodeMissingFacts.
	ReasonNodeJoining         = "NodeJoining"
	ReasonPodCIDROutside      = "PodCIDROutsideNativeRoutingCIDR"
	ReasonTunnelUnsupported   = "TunnelUnsupported"
	ReasonHostRoutingUnsup    = "BPFHostRoutingUnsupported"
	ReasonPeerNotDirect       = "PeerNotDirectlyReachable"
	ReasonTunnelChangeInPlace = "TunnelChangedWhileInUse"
)

type check func(target v1alpha1.NodeDatapath, nodes []Node) PreflightResult

// preflightChecks run in order; the first that does not pass wins, so the
// message names the most basic problem first.
var preflightChecks = []check{
	checkNodeFacts,
	checkPodCIDRsInside,
	checkTunnelChange,
	checkAgentsReported,
	checkTunnelSupported,
	checkHostRoutingSupported,
	checkDirectPeers,
}

// Preflight checks the rules that need the cluster, not just the object.
func Preflight(target v1alpha1.NodeDatapath, nodes []Node) PreflightResult {
	for _, c := range preflightChecks {
		if r := c(target, nodes); r.Reason != "" {
			return r
		}
	}
	return PreflightResult{Reason: ReasonPreflightPassed, Message: fmt.Sprintf("%d nodes checked", len(nodes))}
}

func fail(reason, format string, args ...any) PreflightResult {
	return PreflightResult{Failed: true, Reason: reason, Message: fmt.Sprintf(format, args...)}
}

// checkNodeFacts fails on a node without a podCIDR or InternalIP, unless
// its agent has not reported either: then the node is still joining (a
// kubelet registers before kube-controller-manager allocates its podCIDR)
// and the rollout waits for it.
func checkNodeFacts(_ v1alpha1.NodeDatapath, nodes []Node) PreflightResult {
	var joining []string
	var first PreflightResult
	for _, n := range nodes {
		r := nodeFacts(n)
		switch {
		case r.Reason == "":
			continue
		case n.Status.Capabilities != nil:
			return r
		case len(joining) == 0:
			first = r
		}
		joining = append(joining, n.Name)
	}
	if len(joining) > 0 {
		return PreflightResult{Waiting: true, Reason: ReasonNodeJoining,
			Message: fmt.Sprintf("waiting for %s to join (no agent report yet): %s", bounded.Names(joining, bounded.DefaultNames), first.Message)}
	}
	return PreflightResult{}
}

func nodeFacts(n Node) PreflightResult {
	if _, err := netip.ParsePrefix(n.PodCIDR); err != nil {
		return fail(ReasonNodeMissingFacts, "node %s has no valid podCIDR (%q): routemode routes each node's podCIDR; allocate one (kube-controller-manager --allocate-node-cidrs, or set spec.podCIDR) and the rollout resumes", n.Name, n.PodCIDR)
	}
	if _, err := netip.ParseAddr(n.InternalIP); err != nil {
		return fail(ReasonNodeMissingFacts, "node %s has no InternalIP address: routemode sends to peers at their InternalIP; the kubelet must report one", n.Name)
	}
	return PreflightResult{}
}

func checkPodCIDRsInside(target v1alpha1.NodeDatapath, nodes []Node) PreflightResult {
	if target.SendMode != v1alpha1.SendNative {
		return PreflightResult{}
	}
	cidr, err := netip.ParsePrefix(target.NativeRoutingCIDR)
	if err != nil {
		return fail(ReasonPodCIDROutside, "nativeRoutingCIDR %q is not a CIDR", target.NativeRoutingCIDR)
	}
	for _, n := range nodes {
		p := netip.MustParsePrefix(n.PodCIDR)
		if !cidr.Contains(p.Addr()) || p.Bits() < cidr.Bits() {
			return fail(ReasonPodCIDROutside, "node %s's podCIDR %s is outside nativeRoutingCIDR %s: its pods' traffic would be masqueraded and not routed natively; set nativeRoutingCIDR to a range that holds every node's podCIDR", n.Name, n.PodCIDR, target.NativeRoutingCIDR)
		}
	}
	return PreflightResult{}
}

// checkTunnelChange refuses to swap one tunnel for another in place: nodes on
// the old and the new tunnel could not decapsulate each other's packets, and
// a node keeps one tunnel device.
func checkTunnelChange(target v1alpha1.NodeDatapath, nodes []Node) PreflightResult {
	if target.Tunnel == v1alpha1.TunnelDisabled {
		return PreflightResult{}
	}
	for _, n := range nodes {
		c := n.Datapath
		if c == nil || c.Tunnel == v1alpha1.TunnelDisabled {
			continue
		}
		if c.Tunnel != target.Tunnel || c.TunnelPort != target.TunnelPort {
			return fail(ReasonTunnelChangeInPlace, "node %s uses tunnel %s on port %d: changing it to %s on port %d in place would cut traffic between nodes on the old and the new tunnel; switch to tunnel: disabled first, then to the new tunnel", n.Name, c.Tunnel, c.TunnelPort, target.Tunnel, target.TunnelPort)
		}
	}
	return PreflightResult{}
}

func checkAgentsReported(_ v1alpha1.NodeDatapath, nodes []Node) PreflightResult {
	var missing []string
	for _, n := range nodes {
		if n.Status.Capabilities == nil {
			missing = append(missing, n.Name)
		}
	}
	if len(missing) > 0 {
		return PreflightResult{Waiting: true, Reason: ReasonWaitingForAgents, Message: fmt.Sprintf("waiting for the routemode agent on %s to report its kernel's capabilities", bounded.Names(missing, bounded.DefaultNames))}
	}
	return PreflightResult{}
}

func checkTunnelSupported(target v1alpha1.NodeDatapath, nodes []Node) PreflightResult {
	for _, n := range nodes {
		caps := n.Status.Capabilities
		switch {
		case target.Tunnel == v1alpha1.TunnelGeneve && !caps.Geneve:
			return fail(ReasonTunnelUnsupported, "node %s's kernel (%s) cannot create geneve devices (CONFIG_GENEVE is not set): use tunnel: vxlan", n.Name, caps.Kernel)
		case target.Tunnel == v1alpha1.TunnelVXLAN && !caps.VXLAN:
			return fail(ReasonTunnelUnsupported, "node %s's kernel (%s) cannot create vxlan devices (CONFIG_VXLAN is not set): use tunnel: disabled with native routing", n.Name, caps.Kernel)
		}
	}
	return PreflightResult{}
}

func checkHostRoutingSupported(target v1alpha1.NodeDatapath, nodes []Node) PreflightResult {
	if target.HostRouting != v1alpha1.HostRoutingBPF {
		return PreflightResult{}
	}
	for _, n := range nodes {
		if caps := n.Status.Capabilities; !caps.BPFHostRouting {
			why := ""
			if caps.BPFHostRoutingReason != "" {
				why = " (" + caps.BPFHostRoutingReason + ")"
			}
			return fail(ReasonHostRoutingUnsup, "node %s cannot run eBPF host routing%s; kernel %s, which needs bpf_redirect_peer, bpf_redirect_neigh, tc BPF attachment and the conntrack kfuncs (kernel 6.0 or later with nf_conntrack): use hostRouting: legacy", n.Name, why, caps.Kernel)
		}
	}
	return PreflightResult{}
}

// checkDirectPeers decides from each node's bounded peer report: the agent
// counts its peers and names the ones it reaches only through a gateway, so
// a node whose count covers every other node and names none is adjacent to
// all of them. This is O(N) however large the cluster.
func checkDirectPeers(target v1alpha1.NodeDatapath, nodes []Node) PreflightResult {
	if target.SendMode != v1alpha1.SendNative || !target.AutoDirectNodeRoutes {
		return PreflightResult{}
	}
	var waiting, indirect []string
	var first *Node
	for i, n := range nodes {
		s := n.Status.PeerSummary
		switch {
		case s != nil && s.NotDirect > 0:
			if first == nil {
				first = &nodes[i]
			}
			indirect = append(indirect, n.Name)
		case s == nil || int(s.Total) < len(nodes)-1:
			waiting = append(waiting, n.Name)
		}
	}
	if first != nil {
		s := first.Status.PeerSummary
		// Problems is capped, so NotDirect may count more peers than it lists.
		var peers []string
		for _, p := range s.Problems {
			if !p.Direct {
				peers = append(peers, fmt.Sprintf("%s (%s)", p.Node, p.NodeIP))
			}
		}
		also := ""
		if len(indirect) > 1 {
			also = fmt.Sprintf(" (%d nodes report such peers: %s)", len(indirect), bounded.Names(indirect, bounded.DefaultNames))
		}
		return fail(ReasonPeerNotDirect, "node %s reaches %s only through a gateway%s: autoDirectNodeRoutes needs every node on one L2 network; keep the tunnel, or route pod CIDRs in the underlay and set autoDirectNodeRoutes: false", first.Name, bounded.Counted(peers, int(s.NotDirect), bounded.DefaultNames), also)
	}
	if len(waiting) > 0 {
		return PreflightResult{Waiting: true, Reason: ReasonWaitingForAgents, Message: fmt.Sprintf("waiting for the agent on %s to report whether it reaches all %d peers directly", bounded.Names(waiting, bounded.DefaultNames), len(nodes)-1)}
	}
	return PreflightResult{}
}
