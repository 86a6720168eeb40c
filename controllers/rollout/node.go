package rollout

import (
	"fmt"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/routemode/routemode/api/v1alpha1"
	"github.com/routemode/routemode/internal/bounded"
)

// Node is what the planner knows of one node: its Node object's facts, the
// datapath its RoutingNode asks for, and what its agent reported.
type Node struct {
	Name       string
	PodCIDR    string
	InternalIP string

	// HasRoutingNode is false until the operator created the node's RoutingNode.
	HasRoutingNode bool
	// UID is the RoutingNode's.
	UID types.UID
	// Created is when the RoutingNode was created: its agent could not
	// report before.
	Created time.Time
	// Generation is the RoutingNode's metadata.generation.
	Generation int64
	Datapath   *v1alpha1.NodeDatapath
	Step       v1alpha1.RolloutStep
	// StepStarted is when the current step was written.
	StepStarted time.Time
	// Previous is what the current Switch replaced, the target of a rollback.
	Previous *v1alpha1.NodeDatapath
	// TargetGeneration is the RoutingMode generation the node's step serves.
	TargetGeneration int64
	// RollbackReason says why the node was rolled back, when it was.
	RollbackReason string
	Status         v1alpha1.RoutingNodeStatus
}

// health is how a node stands on its current step.
type health int

const (
	healthPending health = iota
	healthy
	healthFailed
)

// nodeHealth reads the agent's report for the node's current generation:
// only a report for that generation says anything about the current step.
func nodeHealth(n Node) (health, string) {
	if n.Status.ObservedGeneration != n.Generation {
		return healthPending, fmt.Sprintf("the agent on %s has not applied generation %d yet", n.Name, n.Generation)
	}
	applied := meta.FindStatusCondition(n.Status.Conditions, v1alpha1.ConditionDatapathApplied)
	if applied == nil || applied.ObservedGeneration != n.Generation {
		return healthPending, fmt.Sprintf("the agent on %s has not reported its datapath yet", n.Name)
	}
	if applied.Status == metav1.ConditionFalse {
		return healthFailed, fmt.Sprintf("%s could not apply its datapath: %s", n.Name, applied.Message)
	}
	peers := meta.FindStatusCondition(n.Status.Conditions, v1alpha1.ConditionPeersHealthy)
	if peers == nil || peers.ObservedGeneration != n.Generation || peers.Status != metav1.ConditionTrue {
		msg := "no probe result yet"
		if peers != nil && peers.Message != "" {
			msg = peers.Message
		}
		return healthPending, fmt.Sprintf("%s does not reach every peer yet: %s", n.Name, msg)
	}
	// The bounded report must agree: a node that counts an unreachable peer
	// is not healthy, whatever its condition says.
	if s := n.Status.PeerSummary; s != nil && s.Unreachable > 0 {
		var names []string
		for _, p := range s.Problems {
			if !p.Reachable {
				names = append(names, p.Node)
			}
		}
		return healthPending, fmt.Sprintf("%s does not reach %s", n.Name, bounded.Counted(names, int(s.Unreachable), bounded.DefaultNames))
	}
	return healthy, ""
}

// Healthy is the gate a node passes before the rollout moves on: its agent
// applied the node's current generation and reaches every peer. The string
// says why not.
func Healthy(n Node) (bool, string) {
	h, why := nodeHealth(n)
	return h == healthy, why
}
