package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// SendMode is how a node sends to peer pod CIDRs.
// +kubebuilder:validation:Enum=Tunnel;Native
type SendMode string

const (
	// SendTunnel encapsulates towards every peer.
	SendTunnel SendMode = "Tunnel"
	// SendNative routes pod packets unencapsulated.
	SendNative SendMode = "Native"
)

// RouteMTU picks the MTU of pod routes.
// +kubebuilder:validation:Enum=Tunnel;Full
type RouteMTU string

const (
	// RouteMTUTunnel is the underlay MTU minus the 50 bytes of VXLAN overhead.
	RouteMTUTunnel RouteMTU = "Tunnel"
	// RouteMTUFull is the underlay MTU.
	RouteMTUFull RouteMTU = "Full"
)

// TunnelOverhead is what VXLAN over IPv4 adds to a packet: outer IPv4 20,
// UDP 8, VXLAN 8 and the inner Ethernet header 14.
const TunnelOverhead = 50

// RolloutStep names the step of the rollout a node's datapath belongs to.
// +kubebuilder:validation:Enum=Pending;Steady;Prepare;Switch;Finalize;Rollback
type RolloutStep string

const (
	// StepPending means the node has no datapath from routemode yet.
	StepPending RolloutStep = "Pending"
	// StepSteady means the node runs the requested mode.
	StepSteady RolloutStep = "Steady"
	// StepPrepare makes the node receive both ways before anyone switches.
	StepPrepare RolloutStep = "Prepare"
	// StepSwitch changes how the node sends.
	StepSwitch RolloutStep = "Switch"
	// StepFinalize removes what the old mode left.
	StepFinalize RolloutStep = "Finalize"
	// StepRollback puts a node whose switch failed back to how it sent before.
	StepRollback RolloutStep = "Rollback"
)

// NodeDatapath is the complete kernel state one node must have. It is
// explicit, so the agent applies it without knowing about rollouts.
type NodeDatapath struct {
	// tunnel is the tunnel device the node keeps to receive (and, with
	// sendMode Tunnel, to send); disabled means no tunnel device.
	// +required
	Tunnel Tunnel `json:"tunnel"`

	// tunnelPort is the tunnel's UDP port.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	// +required
	TunnelPort int32 `json:"tunnelPort"`

	// sendMode is how the node sends to peer pod CIDRs.
	// +required
	SendMode SendMode `json:"sendMode"`

	// nativeRoutingCIDR is never masqueraded, as a destination; empty means
	// the node's podCIDR. Nor are the nodes whose pods this node reaches
	// over the underlay.
	// +optional
	NativeRoutingCIDR string `json:"nativeRoutingCIDR,omitempty"`

	// autoDirectNodeRoutes installs direct routes to peers when sending natively.
	// +optional
	AutoDirectNodeRoutes bool `json:"autoDirectNodeRoutes,omitempty"` //nolint:kubeapilinter // Cilium's own boolean

	// routeMTU is the MTU of pod routes.
	// +required
	RouteMTU RouteMTU `json:"routeMTU"`

	// looseRPFilter sets rp_filter to loose on the underlay and tunnel
	// devices, needed while peers may answer over the other path.
	// +optional
	LooseRPFilter bool `json:"looseRPFilter,omitempty"` //nolint:kubeapilinter // a kernel switch

	// hostRouting is bpf or legacy.
	// +required
	HostRouting HostRouting `json:"hostRouting"`
}

// RoutingNodeSpec is written by the operator only.
type RoutingNodeSpec struct {
	// nodeName is the Node this object belongs to (also the object's name).
	// +required
	NodeName string `json:"nodeName"`

	// step is the rollout step this datapath belongs to.
	// +required
	Step RolloutStep `json:"step"`

	// targetGeneration is the RoutingMode generation this node is moving to.
	// +optional
	TargetGeneration int64 `json:"targetGeneration,omitempty"`

	// datapath is the state the agent must apply. Unset until the first
	// RoutingMode's preflight passed: the agent then leaves the kernel alone
	// and only reports what the preflight needs (capabilities, peers).
	// +optional
	Datapath *NodeDatapath `json:"datapath,omitempty"`
}

// Condition types on a RoutingNode, written by the node's agent.
const (
	// ConditionDatapathApplied is True when the kernel matches spec.datapath.
	ConditionDatapathApplied = "DatapathApplied"
	// ConditionPeersHealthy is True when the node's probes reach every
	// peer's health endpoint over the pod network.
	ConditionPeersHealthy = "PeersHealthy"
)

// NodeCapabilities is what the node's kernel can do.
type NodeCapabilities struct {
	// kernel is the kernel release.
	// +optional
	Kernel string `json:"kernel,omitempty"`
	// vxlan is true when VXLAN devices can be created.
	VXLAN bool `json:"vxlan"`
	// geneve is true when Geneve devices can be created.
	Geneve bool `json:"geneve"`
	// bpfHostRouting is true when routemode's eBPF host-routing programs
	// load: the redirect_peer, redirect_neigh and fib_lookup helpers, tc
	// attachment and the conntrack kfuncs (kernel 6.0 and later with
	// nf_conntrack).
	BPFHostRouting bool `json:"bpfHostRouting"`
	// bpfHostRoutingReason says why bpfHostRouting is false.
	// +optional
	BPFHostRoutingReason string `json:"bpfHostRoutingReason,omitempty"`
	// tcx is true when programs attach with TCX links (kernel 6.6 and later).
	TCX bool `json:"tcx"`
}

// MaxListedPeers is how many peers a RoutingNode's status names: the
// object stays the same size in a cluster of any size, and the agent serves
// the full per-peer table itself.
const MaxListedPeers = 16

// PeerStatus is one peer with a problem, as this node sees it.
type PeerStatus struct {
	// node is the peer Node's name.
	// +kubebuilder:validation:MaxLength=253
	// +required
	Node string `json:"node"`
	// nodeIP is the peer's InternalIP.
	// +kubebuilder:validation:MaxLength=15
	// +optional
	NodeIP string `json:"nodeIP,omitempty"`
	// direct is true when the peer's node IP is on a directly connected
	// network (a route lookup gives no gateway).
	Direct bool `json:"direct"` //nolint:kubeapilinter // a fact, not a setting
	// reachable is true when the last probe of the peer's health endpoint
	// over the pod network was answered.
	Reachable bool `json:"reachable"` //nolint:kubeapilinter // a fact, not a setting
}

// PeerSummary is the node's view of its peers in a size that does not grow
// with the cluster: counts, and the peers that need attention. A peer that
// is direct and answers is only counted.
//
// +kubebuilder:validation:XValidation:rule="(has(self.notDirect) ? self.notDirect : 0) <= self.total && (has(self.probed) ? self.probed : 0) <= self.total && (has(self.unreachable) ? self.unreachable : 0) <= (has(self.probed) ? self.probed : 0)",message="peer counts are inconsistent: notDirect and probed cannot exceed total, nor unreachable exceed probed"
// +kubebuilder:validation:XValidation:rule="!has(self.problemsNotListed) || self.problemsNotListed == 0 || (has(self.problems) && size(self.problems) == 16)",message="problemsNotListed counts peers beyond a full list: list 16 problems before counting the rest"
type PeerSummary struct {
	// total is the number of peers the node knows: the other nodes with an
	// IPv4 InternalIP and podCIDR.
	// +kubebuilder:validation:Minimum=0
	// +required
	Total int32 `json:"total"`
	// notDirect is the number of peers reached only through a gateway.
	// +kubebuilder:validation:Minimum=0
	// +optional
	NotDirect int32 `json:"notDirect,omitempty"`
	// probed is the number of peers whose health endpoint was probed.
	// +kubebuilder:validation:Minimum=0
	// +optional
	Probed int32 `json:"probed,omitempty"`
	// unreachable is the number of probed peers that did not answer.
	// +kubebuilder:validation:Minimum=0
	// +optional
	Unreachable int32 `json:"unreachable,omitempty"`
	// problems are the first peers, by name, that are not direct or do not
	// answer; the agent serves the full table (routemodectl status --node
	// NODE --peers).
	// +kubebuilder:validation:MaxItems=16
	// +listType=atomic
	// +optional
	Problems []PeerStatus `json:"problems,omitempty"`
	// problemsNotListed is the number of peers with a problem beyond those
	// in problems.
	// +kubebuilder:validation:Minimum=0
	// +optional
	ProblemsNotListed int32 `json:"problemsNotListed,omitempty"`
}

// NodeDatapathStatus is the datapath as read back from the kernel.
type NodeDatapathStatus struct {
	// tunnelDevice is the name of the tunnel device present, if any.
	// +optional
	TunnelDevice string `json:"tunnelDevice,omitempty"`
	// sendMode is how the node currently sends to peers.
	// +optional
	SendMode SendMode `json:"sendMode,omitempty"`
	// routeMTU is the MTU on pod routes.
	// +optional
	RouteMTU int32 `json:"routeMTU,omitempty"`
	// hostRouting is bpf when the host-routing programs are attached.
	// +optional
	HostRouting HostRouting `json:"hostRouting,omitempty"`
	// endpoints is the number of local pods.
	// +optional
	Endpoints int32 `json:"endpoints,omitempty"`
}

// RoutingNodeStatus is written by the node's agent only.
type RoutingNodeStatus struct {
	// observedGeneration is the spec generation the conditions, datapath
	// and peers describe; the agent sets it after applying and probing.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// conditions: DatapathApplied, PeersHealthy.
	// +listType=map
	// +listMapKey=type
	// +optional
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// nodeIP is the underlay address the agent uses.
	// +optional
	NodeIP string `json:"nodeIP,omitempty"`

	// podCIDR is the node's pod CIDR.
	// +optional
	PodCIDR string `json:"podCIDR,omitempty"`

	// vtepMAC is the MAC of the node's VXLAN device, for peers' FDB entries.
	// +optional
	VTEPMAC string `json:"vtepMAC,omitempty"`

	// capabilities is what the kernel can do.
	// +optional
	Capabilities *NodeCapabilities `json:"capabilities,omitempty"`

	// datapath is what the kernel holds now.
	// +optional
	Datapath NodeDatapathStatus `json:"datapath,omitzero"`

	// peers summarizes how the node reaches the other nodes: counts and
	// at most 16 peers that are not direct or do not answer.
	// +optional
	PeerSummary *PeerSummary `json:"peerSummary,omitempty"`
}

// RoutingNode is one node's share of the RoutingMode: the operator writes
// the datapath the node must run (spec), the node's agent reports what it
// applied and observed (status). Its name is the Node's name.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Cluster,shortName=rn
// +kubebuilder:printcolumn:name="Step",type=string,JSONPath=`.spec.step`
// +kubebuilder:printcolumn:name="Send",type=string,JSONPath=`.status.datapath.sendMode`
// +kubebuilder:printcolumn:name="Tunnel Dev",type=string,JSONPath=`.status.datapath.tunnelDevice`
// +kubebuilder:printcolumn:name="MTU",type=integer,JSONPath=`.status.datapath.routeMTU`
// +kubebuilder:printcolumn:name="Host Routing",type=string,JSONPath=`.status.datapath.hostRouting`
// +kubebuilder:printcolumn:name="Applied",type=string,JSONPath=`.status.conditions[?(@.type=="DatapathApplied")].status`
// +kubebuilder:printcolumn:name="Healthy",type=string,JSONPath=`.status.conditions[?(@.type=="PeersHealthy")].status`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type RoutingNode struct {
	metav1.TypeMeta `json:",inline"`
	// +optional
	metav1.ObjectMeta `json:"metadata,omitzero"`

	// spec is written by the operator.
	// +required
	Spec RoutingNodeSpec `json:"spec"`

	// status is written by the node's agent.
	// +optional
	Status RoutingNodeStatus `json:"status,omitzero"`
}

// RoutingNodeList is a list of RoutingNode.
//
// +kubebuilder:object:root=true
type RoutingNodeList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitzero"`
	Items           []RoutingNode `json:"items"`
}
