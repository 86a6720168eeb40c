package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// RoutingModeName is the only name a RoutingMode may have: a cluster has one
// pod network, so it has one routing mode.
const RoutingModeName = "default"

// Tunnel is the encapsulation between nodes, with the values of Cilium's
// `tunnel` key.
// +kubebuilder:validation:Enum=vxlan;geneve;disabled
type Tunnel string

const (
	// TunnelVXLAN encapsulates pod traffic in VXLAN (UDP, port 8472 by default).
	TunnelVXLAN Tunnel = "vxlan"
	// TunnelGeneve encapsulates pod traffic in Geneve.
	TunnelGeneve Tunnel = "geneve"
	// TunnelDisabled means native routing: pod packets cross the underlay as they are.
	TunnelDisabled Tunnel = "disabled"
)

// HostRouting is how a node forwards between its pods and the network, named
// after Cilium's eBPF and legacy host routing.
// +kubebuilder:validation:Enum=bpf;legacy
type HostRouting string

const (
	// HostRoutingBPF forwards with bpf_redirect_peer and bpf_redirect_neigh,
	// skipping the host's netfilter and upper stack
	// (Cilium enable-host-legacy-routing=false).
	HostRoutingBPF HostRouting = "bpf"
	// HostRoutingLegacy forwards through the host's IP stack and netfilter
	// (Cilium enable-host-legacy-routing=true).
	HostRoutingLegacy HostRouting = "legacy"
)

// AnnotationLastAppliedSpec holds, on the RoutingMode, the JSON of the last
// spec whose rollout completed: the operator writes it, `routemodectl
// rollout undo` goes back to it.
const AnnotationLastAppliedSpec = "routemode.io/last-applied-spec"

// DefaultTunnelPort is VXLAN's Linux default port, also Cilium's.
const DefaultTunnelPort = 8472

// RoutingModeSpec is the pod networking the cluster should run. Its fields
// are named after Cilium's configuration keys.
//
// +kubebuilder:validation:XValidation:rule="self.tunnel != 'disabled' || has(self.nativeRoutingCIDR)",message="nativeRoutingCIDR is required when tunnel is disabled: native routing must know which destinations are pod addresses, routed without masquerading (Cilium: native-routing-cidr); set it to the CIDR that holds every node's podCIDR, e.g. 10.0.0.0/16"
// +kubebuilder:validation:XValidation:rule="!has(self.autoDirectNodeRoutes) || !self.autoDirectNodeRoutes || self.tunnel == 'disabled'",message="autoDirectNodeRoutes requires tunnel: disabled: direct node routes would send pod traffic around the tunnel, so Cilium refuses this combination too; set tunnel: disabled, or set autoDirectNodeRoutes: false"
type RoutingModeSpec struct {
	// tunnel is the encapsulation between nodes: vxlan, geneve, or disabled
	// for native routing (Cilium `tunnel`).
	// +kubebuilder:default=vxlan
	// +optional
	Tunnel Tunnel `json:"tunnel,omitempty"`

	// tunnelPort is the UDP port of the tunnel (Cilium `tunnel-port`).
	// +kubebuilder:default=8472
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	// +optional
	TunnelPort int32 `json:"tunnelPort,omitempty"`

	// nativeRoutingCIDR holds the pod addresses that are routed natively and
	// never masqueraded (Cilium `native-routing-cidr`). Required when tunnel
	// is disabled. IPv4, network address only, e.g. 10.0.0.0/16.
	// +kubebuilder:validation:MaxLength=18
	// +kubebuilder:validation:XValidation:rule="isCIDR(self)",message="nativeRoutingCIDR must be an IPv4 CIDR such as 10.0.0.0/16"
	// +kubebuilder:validation:XValidation:rule="!isCIDR(self) || cidr(self).ip().family() == 4",message="nativeRoutingCIDR must be an IPv4 CIDR: routemode routes IPv4 pods only"
	// +kubebuilder:validation:XValidation:rule="!isCIDR(self) || cidr(self) == cidr(self).masked()",message="nativeRoutingCIDR has host bits set: write the network address, e.g. 10.0.0.0/16 rather than 10.0.0.1/16"
	// +optional
	NativeRoutingCIDR string `json:"nativeRoutingCIDR,omitempty"`

	// autoDirectNodeRoutes installs `<peer podCIDR> via <peer node IP>` on
	// every node for every peer on the same L2 network (Cilium
	// `auto-direct-node-routes`). Only valid with tunnel: disabled.
	// +optional
	AutoDirectNodeRoutes bool `json:"autoDirectNodeRoutes,omitempty"` //nolint:kubeapilinter // Cilium's own boolean

	// hostRouting is bpf for eBPF host routing or legacy for the host stack
	// (Cilium `enable-host-legacy-routing` false or true). The default is
	// legacy: turning eBPF host routing on changes which netfilter rules see
	// pod traffic, so it is never switched on silently.
	// +kubebuilder:default=legacy
	// +optional
	HostRouting HostRouting `json:"hostRouting,omitempty"`

	// rollout says how a change reaches the nodes.
	// +kubebuilder:default={}
	// +optional
	Rollout RolloutSpec `json:"rollout,omitzero"`
}

// RolloutSpec tunes the node-by-node rollout of a change.
type RolloutSpec struct {
	// maxUnavailable is how many nodes switch at once: a count, or a
	// percentage of the nodes rounded down (at least one node).
	// +kubebuilder:default=1
	// +kubebuilder:validation:XIntOrString
	// +kubebuilder:validation:XValidation:rule="type(self) == int ? self >= 1 : self.matches('^([1-9][0-9]?|100)%$')",message="maxUnavailable must be a count of at least 1 or a percentage from 1% to 100%"
	// +optional
	MaxUnavailable *intstr.IntOrString `json:"maxUnavailable,omitempty"`

	// healthCheckTimeout is how long a node may take to apply a step and pass
	// its health probes to every peer before the step counts as failed.
	// +kubebuilder:default="2m"
	// The first rule keeps a non-duration from reaching duration(), whose
	// type conversion error would not say what to write. Go's and CEL's
	// duration syntax (ASCII units): a bare 0, or numbers each with a unit.
	// +kubebuilder:validation:XValidation:rule="self.matches('^[-+]?(0|([0-9]+([.][0-9]*)?(ns|us|ms|s|m|h))+)$')",message="healthCheckTimeout must be a duration such as 2m or 90s: a number with a unit (ms, s, m, h)"
	// +kubebuilder:validation:XValidation:rule="!self.matches('^[-+]?(0|([0-9]+([.][0-9]*)?(ns|us|ms|s|m|h))+)$') || duration(self) >= duration('1s')",message="healthCheckTimeout must be at least 1s, e.g. 2m"
	// +optional
	HealthCheckTimeout *metav1.Duration `json:"healthCheckTimeout,omitempty"`

	// paused stops the rollout before the next batch of nodes; nodes already
	// switching finish their step.
	// +optional
	Paused bool `json:"paused,omitempty"` //nolint:kubeapilinter // a switch, like Deployment's

	// autoRollback puts a node whose step failed back to its previous state
	// before the rollout halts.
	// +kubebuilder:default=true
	// +optional
	AutoRollback *bool `json:"autoRollback,omitempty"`
}

// RolloutPhase is where a rollout stands.
type RolloutPhase string

const (
	// PhasePreflight checks the cluster before any node is touched.
	PhasePreflight RolloutPhase = "Preflight"
	// PhasePreparing makes every node receive both ways.
	PhasePreparing RolloutPhase = "Preparing"
	// PhaseSwitching changes how nodes send, batch by batch.
	PhaseSwitching RolloutPhase = "Switching"
	// PhaseFinalizing removes what the old mode left.
	PhaseFinalizing RolloutPhase = "Finalizing"
	// PhasePaused holds the rollout between batches.
	PhasePaused RolloutPhase = "Paused"
	// PhaseStalled means the rollout halted on an error that needs a person.
	PhaseStalled RolloutPhase = "Stalled"
	// PhaseComplete means every node runs the requested mode.
	PhaseComplete RolloutPhase = "Complete"
)

// Condition types on a RoutingMode. Ready, Reconciling and Stalled are the
// ones kstatus, Flux and the Argo CD health script read.
const (
	ConditionReady       = "Ready"
	ConditionReconciling = "Reconciling"
	ConditionStalled     = "Stalled"
	// ConditionPreflightSucceeded reports the cluster checks.
	ConditionPreflightSucceeded = "PreflightSucceeded"
	// ConditionNodesPrepared reports that every node receives both ways.
	ConditionNodesPrepared = "NodesPrepared"
	// ConditionNodesSwitched reports that every node sends the new way.
	ConditionNodesSwitched = "NodesSwitched"
	// ConditionNodesFinalized reports that the old mode's state is gone.
	ConditionNodesFinalized = "NodesFinalized"
)

// ActualRouting is how nodes send to each other, as their agents report it.
type ActualRouting string

const (
	ActualRoutingTunnel ActualRouting = "Tunnel"
	ActualRoutingNative ActualRouting = "Native"
	// ActualRoutingMixed means some nodes tunnel and others route natively,
	// as in the middle of a rollout.
	ActualRoutingMixed ActualRouting = "Mixed"
	// ActualRoutingUnknown means no agent has reported yet.
	ActualRoutingUnknown ActualRouting = "Unknown"
)

// DatapathSummary is the mode the cluster's datapath is actually in.
type DatapathSummary struct {
	// routing is Tunnel, Native, Mixed or Unknown.
	// +optional
	Routing ActualRouting `json:"routing,omitempty"`
	// hostRouting is bpf, legacy, Mixed or Unknown.
	// +optional
	HostRouting string `json:"hostRouting,omitempty"`
}

// NodeCounts counts the nodes of a rollout.
type NodeCounts struct {
	// total is the number of nodes.
	Total int32 `json:"total"`
	// updated is the number of nodes that run the requested mode.
	Updated int32 `json:"updated"`
	// healthy is the number of nodes that applied their step and reach every peer.
	Healthy int32 `json:"healthy"`
	// failed is the number of nodes whose step failed.
	Failed int32 `json:"failed"`
}

// RoutingModeStatus is what the operator observed and did.
type RoutingModeStatus struct {
	// observedGeneration is the spec generation this status describes.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// conditions: Ready, Reconciling, Stalled, PreflightSucceeded,
	// NodesPrepared, NodesSwitched, NodesFinalized.
	// +listType=map
	// +listMapKey=type
	// +optional
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// phase is where the rollout stands.
	// +optional
	Phase RolloutPhase `json:"phase,omitempty"`

	// nodes counts the nodes by progress.
	// +optional
	Nodes NodeCounts `json:"nodes,omitzero"`

	// progress is updated/total, for kubectl get.
	// +optional
	Progress string `json:"progress,omitempty"`

	// datapath is the mode the nodes' agents report, not just the one asked for.
	// +optional
	Datapath DatapathSummary `json:"datapath,omitzero"`

	// rolloutStartTime is when the rollout of observedGeneration began.
	// +optional
	RolloutStartTime *metav1.Time `json:"rolloutStartTime,omitempty"`
}

// RoutingMode is the cluster's pod networking mode. There is one, named
// "default"; changing its spec rolls the change out live, node by node.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Cluster,shortName=rm
// +kubebuilder:printcolumn:name="Tunnel",type=string,JSONPath=`.spec.tunnel`
// +kubebuilder:printcolumn:name="Host Routing",type=string,JSONPath=`.spec.hostRouting`
// +kubebuilder:printcolumn:name="Routing",type=string,JSONPath=`.status.datapath.routing`,description="How the nodes actually send"
// +kubebuilder:printcolumn:name="Phase",type=string,JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="Updated",type=string,JSONPath=`.status.progress`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
// +kubebuilder:validation:XValidation:rule="self.metadata.name == 'default'",message="a cluster has one RoutingMode and it must be named \"default\"; rename this object to default"
type RoutingMode struct {
	metav1.TypeMeta `json:",inline"`
	// +optional
	metav1.ObjectMeta `json:"metadata,omitzero"`

	// spec is the requested mode.
	// +required
	Spec RoutingModeSpec `json:"spec"`

	// status is the observed rollout.
	// +optional
	Status RoutingModeStatus `json:"status,omitzero"`
}

// RoutingModeList is a list of RoutingMode.
//
// +kubebuilder:object:root=true
type RoutingModeList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitzero"`
	Items           []RoutingMode `json:"items"`
}
