package node

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/routemode/routemode/agent/datapath"
	"github.com/routemode/routemode/agent/endpoint"
	"github.com/routemode/routemode/agent/health"
	"github.com/routemode/routemode/agent/kernel"
	"github.com/routemode/routemode/api/v1alpha1"
	"github.com/routemode/routemode/internal/bounded"
	"github.com/routemode/routemode/internal/peertable"
)

// Condition reasons.
const (
	ReasonApplied           = "Applied"
	ReasonNoDatapath        = "NoDatapath"
	ReasonApplyFailed       = "ApplyFailed"
	ReasonNotConverged      = "NotConverged"
	ReasonHostRoutingFailed = "HostRoutingFailed"
	ReasonAllReachable      = "AllPeersReachable"
	ReasonNoPeers           = "NoPeers"
	ReasonPeersUnreachable  = "PeersUnreachable"
	ReasonNotApplied        = "DatapathNotApplied"
)

// observation is what one reconcile saw and did: the only input of the
// status. The steps in node.go fill it as far as they get; the functions
// below turn it into the status, one function per field or condition, so
// each is table-tested without a kernel.
type observation struct {
	Generation int64
	// Spec is spec.datapath; nil leaves the kernel alone.
	Spec         *v1alpha1.NodeDatapath
	Self         datapath.Node
	Capabilities v1alpha1.NodeCapabilities
	// Peers are the request's peers as classified on the underlay; Routes
	// holds each one's rendered route, once the spec was rendered with the
	// endpoints.
	Peers  []datapath.Peer
	Routes map[string]datapath.PeerRoute
	// Err is the first step that failed (see failed for its reason); nil
	// means the spec is applied and the kernel read back matches it.
	Err error
	// HostRouting is the host routing in force, once the host router ran.
	HostRouting v1alpha1.HostRouting
	// ReadBack is the kernel as read after applying; nil until then.
	ReadBack *readBack
	// Probes holds each probed peer's health probe by name.
	Probes map[string]health.Result
}

// readBack is the kernel state read after applying.
type readBack struct {
	State datapath.State
	// RouteMTU is the rendered pods' route MTU.
	RouteMTU  int
	Endpoints []endpoint.Endpoint
}

// stepError carries the DatapathApplied reason of a step's failure.
type stepError struct {
	reason string
	err    error
}

func (e *stepError) Error() string { return e.err.Error() }
func (e *stepError) Unwrap() error { return e.err }

// failed marks err as a failure reported with reason. Errors not marked
// report a Refusal's own reason, or ApplyFailed.
func failed(reason string, err error) error { return &stepError{reason: reason, err: err} }

// failureReason is the DatapathApplied reason of a step's error.
func failureReason(err error) string {
	var se *stepError
	if errors.As(err, &se) {
		return se.reason
	}
	var ref *datapath.Refusal
	if errors.As(err, &ref) {
		return ref.Reason
	}
	return ReasonApplyFailed
}

// computeStatus is the only place the status is computed. Conditions keep
// their transition time from prev while their status stays the same.
func computeStatus(prev v1alpha1.RoutingNodeStatus, o observation) v1alpha1.RoutingNodeStatus {
	st := v1alpha1.RoutingNodeStatus{
		ObservedGeneration: o.Generation,
		Conditions:         slices.Clone(prev.Conditions),
		Capabilities:       &o.Capabilities,
		Datapath:           datapathStatus(o),
		PeerSummary:        peertable.Summarize(peerRows(o)),
	}
	if o.Self.IP.IsValid() {
		st.NodeIP = o.Self.IP.String()
		st.VTEPMAC = datapath.VTEPMAC(o.Self.IP).String()
	}
	if o.Self.PodCIDR.IsValid() {
		st.PodCIDR = o.Self.PodCIDR.String()
	}
	for _, condition := range []func(observation) metav1.Condition{
		datapathAppliedCondition, peersHealthyCondition,
	} {
		c := condition(o)
		c.ObservedGeneration = o.Generation
		// Messages quote kernel errors; an unbounded one would make the
		// whole status unwritable.
		c.Message = bounded.Message(c.Message)
		meta.SetStatusCondition(&st.Conditions, c)
	}
	return st
}

// requeueAfter is resync while every condition is True, and soon while
// any is not: a node that is not there yet is looked at again shortly.
func requeueAfter(st v1alpha1.RoutingNodeStatus, resync time.Duration) time.Duration {
	for _, c := range st.Conditions {
		if c.Status != metav1.ConditionTrue {
			return min(resync, 2*time.Second)
		}
	}
	return resync
}

func datapathAppliedCondition(o observation) metav1.Condition {
	c := metav1.Condition{Type: v1alpha1.ConditionDatapathApplied}
	switch {
	case o.Spec == nil:
		c.Status, c.Reason, c.Message = metav1.ConditionUnknown, ReasonNoDatapath, "spec.datapath is unset: the kernel is left alone"
	case o.Err != nil:
		c.Status, c.Reason, c.Message = metav1.ConditionFalse, failureReason(o.Err), o.Err.Error()
	default:
		d := datapathStatus(o)
		c.Status, c.Reason = metav1.ConditionTrue, ReasonApplied
		c.Message = fmt.Sprintf("tunnel %s, sending %s, route MTU %d, host routing %s",
			o.Spec.Tunnel, d.SendMode, o.ReadBack.RouteMTU, d.HostRouting)
	}
	return c
}

// peersHealthyCondition says whether every peer answered; peers are only
// probed once the datapath is applied.
func peersHealthyCondition(o observation) metav1.Condition {
	c := metav1.Condition{Type: v1alpha1.ConditionPeersHealthy}
	var unreachable []string
	for name, res := range o.Probes {
		if !res.Reachable {
			unreachable = append(unreachable, name)
		}
	}
	slices.Sort(unreachable)
	switch {
	case o.Spec == nil:
		c.Status, c.Reason, c.Message = metav1.ConditionUnknown, ReasonNoDatapath, "peers are probed once a datapath is applied"
	case o.Err != nil:
		c.Status, c.Reason, c.Message = metav1.ConditionUnknown, ReasonNotApplied, "peers are probed once the datapath is applied"
	case len(o.Probes) == 0:
		c.Status, c.Reason, c.Message = metav1.ConditionTrue, ReasonNoPeers, "no peers to probe"
	case len(unreachable) == 0:
		c.Status, c.Reason = metav1.ConditionTrue, ReasonAllReachable
		c.Message = fmt.Sprintf("all %d peers answer on the pod network", len(o.Probes))
	default:
		c.Status, c.Reason = metav1.ConditionFalse, ReasonPeersUnreachable
		c.Message = fmt.Sprintf("%d of %d peers do not answer on the pod network: %s", len(unreachable), len(o.Probes), bounded.Names(unreachable, bounded.DefaultNames))
	}
	return c
}

// datapathStatus describes the datapath from the kernel as read back; the
// send mode is the spec's while no peer route shows one.
func datapathStatus(o observation) v1alpha1.NodeDatapathStatus {
	d := v1alpha1.NodeDatapathStatus{HostRouting: o.HostRouting}
	rb := o.ReadBack
	if rb == nil {
		return d
	}
	if rb.State.Tunnel != nil {
		d.TunnelDevice = rb.State.Tunnel.Name
	}
	var tunnel, direct int
	for _, rt := range rb.State.Routes {
		if rt.Dev == datapath.TunnelDevice {
			tunnel++
		} else {
			direct++
		}
	}
	switch {
	case direct > 0:
		d.SendMode = v1alpha1.SendNative
	case tunnel > 0:
		d.SendMode = v1alpha1.SendTunnel
	case o.Spec != nil:
		d.SendMode = o.Spec.SendMode
	}
	// The health endpoint's route MTU is the one pods really have.
	d.RouteMTU = int32(rb.RouteMTU)
	for _, ep := range rb.Endpoints {
		if ep.ContainerID == health.ContainerID {
			if mtu, ok := rb.State.PodMTU[kernel.EndpointKey(ep)]; ok && mtu > 0 {
				d.RouteMTU = int32(mtu)
			}
			continue
		}
		d.Endpoints++
	}
	return d
}

// peerRows is the full peer table, sorted by name: how each peer is
// reached, whether it answered, its round trip, and why not. It stays on the
// node (Agent.PeerTable); the status gets its bounded summary.
func peerRows(o observation) []peertable.Row {
	out := make([]peertable.Row, 0, len(o.Peers))
	for _, p := range o.Peers {
		row := peertable.Row{Node: p.Name, Direct: p.Direct}
		if p.IP.IsValid() {
			row.NodeIP = p.IP.String()
		}
		var msgs []string
		if rt, ok := o.Routes[p.Name]; ok && rt.Message != "" {
			msgs = append(msgs, rt.Message)
		} else if !p.Direct && p.Why != "" {
			msgs = append(msgs, "not directly reachable: "+p.Why)
		}
		if res, ok := o.Probes[p.Name]; ok {
			row.Probed, row.Reachable = true, res.Reachable
			if res.Reachable {
				row.RTTMicroseconds = max(res.RTT.Microseconds(), 1)
			} else {
				msgs = append(msgs, fmt.Sprintf("health endpoint %s does not answer", healthIP(p.PodCIDR)))
			}
		} else if !p.PodCIDR.IsValid() {
			msgs = append(msgs, "no podCIDR")
		}
		row.Message = strings.Join(msgs, "; ")
		out = append(out, row)
	}
	slices.SortFunc(out, func(a, b peertable.Row) int { return strings.Compare(a.Node, b.Node) })
	return out
}
