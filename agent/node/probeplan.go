package node

import (
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/routemode/routemode/agent/health"
	"github.com/routemode/routemode/api/v1alpha1"
)

// DefaultProbeBudget is how many peers a reconcile probes in steady state:
// with the 10 s resync, at most 6.4 probes per second per node however
// large the cluster, so every peer of a 5,000-node cluster is re-probed
// about every 13 minutes (Cilium's cilium-health probes every peer every
// 60 s, which grows with the cluster).
const DefaultProbeBudget = 64

// prober keeps the last probe of every peer, so that a reconcile that
// probes only some peers still reports on all of them. Only Reconcile uses
// it, one at a time.
type prober struct {
	last   map[string]health.Result
	cursor int
}

// fullSweep reports whether every peer must be probed now: the node's
// datapath changed (a new generation, which the rollout's health gate waits
// on), its peers were not all healthy at this generation, or the agent has
// no earlier probes (it just started).
func (p *prober) fullSweep(gen int64, prev v1alpha1.RoutingNodeStatus) bool {
	c := meta.FindStatusCondition(prev.Conditions, v1alpha1.ConditionPeersHealthy)
	return len(p.last) == 0 || prev.ObservedGeneration != gen || c == nil || c.ObservedGeneration != gen || c.Status != metav1.ConditionTrue
}

// pick chooses this reconcile's probes: all targets on a full sweep;
// otherwise at most budget, first those never probed or last unreachable,
// then the next peers in a rotation over all of them.
func (p *prober) pick(targets []health.Target, full bool, budget int) []health.Target {
	if full || budget <= 0 || len(targets) <= budget {
		return targets
	}
	chosen := make([]health.Target, 0, budget)
	taken := map[string]bool{}
	for _, t := range targets {
		if len(chosen) == budget {
			return chosen
		}
		if r, ok := p.last[t.Name]; !ok || !r.Reachable {
			chosen, taken[t.Name] = append(chosen, t), true
		}
	}
	for range len(targets) {
		if len(chosen) == budget {
			break
		}
		t := targets[p.cursor%len(targets)]
		p.cursor = (p.cursor + 1) % len(targets)
		if !taken[t.Name] {
			chosen, taken[t.Name] = append(chosen, t), true
		}
	}
	return chosen
}

// record merges this reconcile's results into the last probes, forgetting
// peers that are gone, and returns every current peer's latest result.
func (p *prober) record(targets []health.Target, results []health.Result) map[string]health.Result {
	current := make(map[string]health.Result, len(targets))
	for _, t := range targets {
		if r, ok := p.last[t.Name]; ok {
			current[t.Name] = r
		}
	}
	for _, r := range results {
		current[r.Name] = r
	}
	p.last = current
	out := make(map[string]health.Result, len(current))
	for k, v := range current {
		out[k] = v
	}
	return out
}
