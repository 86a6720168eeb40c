package cli

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/duration"

	"github.com/routemode/routemode/api/v1alpha1"
	"github.com/routemode/routemode/internal/bounded"
)

// statusReport is what `status -o json|yaml` prints.
type statusReport struct {
	RoutingMode *v1alpha1.RoutingMode  `json:"routingMode"`
	Nodes       []v1alpha1.RoutingNode `json:"nodes"`
}

// conditionOrder lists the RoutingMode conditions in the order a reader
// needs them: the summary first, then the rollout's steps.
var conditionOrder = []string{
	v1alpha1.ConditionReady, v1alpha1.ConditionReconciling, v1alpha1.ConditionStalled,
	v1alpha1.ConditionPreflightSucceeded, v1alpha1.ConditionNodesPrepared,
	v1alpha1.ConditionNodesSwitched, v1alpha1.ConditionNodesFinalized,
}

// formatStatus writes the human-readable status, in the spirit of
// `cilium status`: a few labelled lines, then tables.
func formatStatus(w io.Writer, rm *v1alpha1.RoutingMode, nodes []v1alpha1.RoutingNode, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	st := rm.Status
	fmt.Fprintf(tw, "RoutingMode:\t%s (generation %d, observed %d)\n", rm.Name, rm.Generation, st.ObservedGeneration)
	fmt.Fprintf(tw, "Requested:\t%s\n", describeSpec(rm.Spec))
	fmt.Fprintf(tw, "Routing:\tNetwork: %s   Host: %s\n", networkLabel(st.Datapath.Routing), hostLabel(st.Datapath.HostRouting))
	fmt.Fprintf(tw, "Rollout:\t%s\n", describeRollout(rm))
	if rm.Generation != 0 && st.ObservedGeneration != rm.Generation {
		fmt.Fprintf(tw, "Note:\tthe operator has not yet seen generation %d: the status below describes generation %d\n", rm.Generation, st.ObservedGeneration)
	}
	if err := tw.Flush(); err != nil {
		return err
	}

	fmt.Fprintln(w, "\nConditions:")
	if len(st.Conditions) == 0 {
		fmt.Fprintln(w, "  none yet: the routemode operator has not reported on this RoutingMode (is it running?)")
	} else {
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "  TYPE\tSTATUS\tREASON\tAGE\tMESSAGE")
		for _, c := range sortedConditions(st.Conditions) {
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\n", c.Type, c.Status, dash(c.Reason), age(c.LastTransitionTime, now), dash(oneLine(c.Message)))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}

	fmt.Fprintln(w, "\nNodes:")
	if len(nodes) == 0 {
		fmt.Fprintln(w, "  no RoutingNode objects yet: the operator creates one per node once it reconciles the RoutingMode")
		return nil
	}
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  NODE\tSTEP\tSEND\tTUNNEL DEV\tROUTE MTU\tHOST ROUTING\tAPPLIED\tPEERS\tMESSAGE")
	for _, n := range sortedNodes(nodes) {
		ds := n.Status.Datapath
		mtu := "-"
		if ds.RouteMTU > 0 {
			mtu = fmt.Sprint(ds.RouteMTU)
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n",
			n.Name, dash(string(n.Spec.Step)), dash(string(ds.SendMode)), dash(ds.TunnelDevice), mtu,
			dash(string(ds.HostRouting)), conditionStatus(n.Status.Conditions, v1alpha1.ConditionDatapathApplied),
			peersSummary(n.Status.PeerSummary), nodeMessage(n))
	}
	return tw.Flush()
}

func describeSpec(s v1alpha1.RoutingModeSpec) string {
	tunnel := s.Tunnel
	if tunnel == "" {
		tunnel = v1alpha1.TunnelVXLAN
	}
	var parts []string
	if tunnel == v1alpha1.TunnelDisabled {
		parts = append(parts, "native routing")
	} else {
		port := s.TunnelPort
		if port == 0 {
			port = v1alpha1.DefaultTunnelPort
		}
		parts = append(parts, fmt.Sprintf("tunnel %s (UDP %d)", tunnel, port))
	}
	if s.NativeRoutingCIDR != "" {
		parts = append(parts, "native routing CIDR "+s.NativeRoutingCIDR)
	}
	if s.AutoDirectNodeRoutes {
		parts = append(parts, "auto direct node routes")
	}
	hr := s.HostRouting
	if hr == "" {
		hr = v1alpha1.HostRoutingLegacy
	}
	parts = append(parts, "host routing "+string(hr))
	return strings.Join(parts, ", ")
}

// networkLabel and hostLabel use cilium status's words.
func networkLabel(r v1alpha1.ActualRouting) string {
	if r == "" {
		return string(v1alpha1.ActualRoutingUnknown)
	}
	return string(r)
}

func hostLabel(h string) string {
	switch h {
	case string(v1alpha1.HostRoutingBPF):
		return "BPF"
	case string(v1alpha1.HostRoutingLegacy):
		return "Legacy"
	case "":
		return "Unknown"
	default:
		return h
	}
}

func describeRollout(rm *v1alpha1.RoutingMode) string {
	st := rm.Status
	out := string(st.Phase)
	if out == "" {
		out = "not started"
	}
	if n := st.Nodes; n.Total > 0 {
		out += fmt.Sprintf(", %d/%d nodes updated, %d healthy, %d failed", n.Updated, n.Total, n.Healthy, n.Failed)
	}
	if rm.Spec.Rollout.Paused {
		switch st.Phase {
		case v1alpha1.PhasePaused:
			out += " (resume with routemodectl rollout resume)"
		case v1alpha1.PhaseComplete:
			out += " (paused: the next change waits for routemodectl rollout resume)"
		default:
			out += " (pause requested: nodes finish their step, no new batch starts)"
		}
	}
	return out
}

func sortedConditions(conds []metav1.Condition) []metav1.Condition {
	out := slices.Clone(conds)
	rank := func(t string) int {
		if i := slices.Index(conditionOrder, t); i >= 0 {
			return i
		}
		return len(conditionOrder)
	}
	slices.SortStableFunc(out, func(a, b metav1.Condition) int {
		if d := rank(a.Type) - rank(b.Type); d != 0 {
			return d
		}
		return strings.Compare(a.Type, b.Type)
	})
	return out
}

func sortedNodes(nodes []v1alpha1.RoutingNode) []v1alpha1.RoutingNode {
	out := slices.Clone(nodes)
	slices.SortFunc(out, func(a, b v1alpha1.RoutingNode) int { return strings.Compare(a.Name, b.Name) })
	return out
}

func conditionStatus(conds []metav1.Condition, t string) string {
	if c := meta.FindStatusCondition(conds, t); c != nil {
		return string(c.Status)
	}
	return "-"
}

// peersSummary is "answering/total", from the agent's bounded report.
func peersSummary(s *v1alpha1.PeerSummary) string {
	if s == nil || s.Total == 0 {
		return "-"
	}
	return fmt.Sprintf("%d/%d", s.Probed-s.Unreachable, s.Total)
}

// nodeMessage is the one thing to know about a node: that its agent lags,
// the message of a failing condition, or an unreachable peer.
func nodeMessage(n v1alpha1.RoutingNode) string {
	if n.Status.ObservedGeneration != n.Generation {
		return fmt.Sprintf("agent has not applied generation %d yet", n.Generation)
	}
	for _, t := range []string{v1alpha1.ConditionDatapathApplied, v1alpha1.ConditionPeersHealthy} {
		if c := meta.FindStatusCondition(n.Status.Conditions, t); c != nil && c.Status != metav1.ConditionTrue && c.Message != "" {
			return oneLine(c.Message)
		}
	}
	if s := n.Status.PeerSummary; s != nil && s.Unreachable > 0 {
		var names []string
		for _, p := range s.Problems {
			if !p.Reachable {
				names = append(names, p.Node)
			}
		}
		return fmt.Sprintf("peers unreachable: %s (routemodectl status --node %s --peers has the full table)",
			bounded.Counted(names, int(s.Unreachable), bounded.DefaultNames), n.Name)
	}
	return "-"
}

func age(t metav1.Time, now time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return duration.HumanDuration(now.Sub(t.Time))
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// oneLine keeps a table row on one line.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
