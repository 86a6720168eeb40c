package node

import (
	"fmt"
	"net/netip"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/routemode/routemode/agent/health"
	"github.com/routemode/routemode/api/v1alpha1"
)

func targets(n int) []health.Target {
	out := make([]health.Target, n)
	for i := range out {
		out[i] = health.Target{Name: fmt.Sprintf("node-%04d", i), IP: netip.AddrFrom4([4]byte{10, byte(i / 256), byte(i % 256), 2})}
	}
	return out
}

func answered(ts []health.Target, down ...string) []health.Result {
	out := make([]health.Result, len(ts))
	for i, t := range ts {
		out[i] = health.Result{Name: t.Name, Reachable: true}
		for _, d := range down {
			if d == t.Name {
				out[i].Reachable = false
			}
		}
	}
	return out
}

func TestFullSweep(t *testing.T) {
	healthy := func(gen int64, st metav1.ConditionStatus) v1alpha1.RoutingNodeStatus {
		return v1alpha1.RoutingNodeStatus{ObservedGeneration: gen, Conditions: []metav1.Condition{
			{Type: v1alpha1.ConditionPeersHealthy, Status: st, ObservedGeneration: gen}}}
	}
	withHistory := &prober{last: map[string]health.Result{"node-0001": {Name: "node-0001", Reachable: true}}}
	for name, tc := range map[string]struct {
		p    *prober
		gen  int64
		prev v1alpha1.RoutingNodeStatus
		want bool
	}{
		"agent just started":                 {p: &prober{}, gen: 4, prev: healthy(4, metav1.ConditionTrue), want: true},
		"new generation: the gate waits":     {p: withHistory, gen: 5, prev: healthy(4, metav1.ConditionTrue), want: true},
		"peers not all healthy":              {p: withHistory, gen: 4, prev: healthy(4, metav1.ConditionFalse), want: true},
		"no PeersHealthy yet":                {p: withHistory, gen: 4, prev: v1alpha1.RoutingNodeStatus{ObservedGeneration: 4}, want: true},
		"steady: healthy at this generation": {p: withHistory, gen: 4, prev: healthy(4, metav1.ConditionTrue), want: false},
	} {
		t.Run(name, func(t *testing.T) {
			if got := tc.p.fullSweep(tc.gen, tc.prev); got != tc.want {
				t.Errorf("fullSweep = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestPickIsBoundedAndCoversEveryPeer(t *testing.T) {
	ts := targets(5000)
	p := &prober{}
	if got := p.pick(ts, true, DefaultProbeBudget); len(got) != 5000 {
		t.Fatalf("a full sweep probes %d of 5000 peers", len(got))
	}
	p.record(ts, answered(ts))
	seen := map[string]bool{}
	rounds := (5000 + DefaultProbeBudget - 1) / DefaultProbeBudget
	for range rounds {
		got := p.pick(ts, false, DefaultProbeBudget)
		if len(got) != DefaultProbeBudget && len(seen)+len(got) != 5000 {
			t.Fatalf("steady state probes %d peers, want %d", len(got), DefaultProbeBudget)
		}
		for _, tg := range got {
			seen[tg.Name] = true
		}
		p.record(ts, answered(got))
	}
	if len(seen) != 5000 {
		t.Errorf("%d rounds of %d probed %d distinct peers, want all 5000", rounds, DefaultProbeBudget, len(seen))
	}
}

func TestPickProbesUnreachablePeersFirst(t *testing.T) {
	ts := targets(200)
	p := &prober{}
	p.record(ts, answered(ts, "node-0150", "node-0199"))
	got := p.pick(ts, false, 4)
	if len(got) != 4 || got[0].Name != "node-0150" || got[1].Name != "node-0199" {
		t.Errorf("picked %v, want the two unreachable peers first", got)
	}
}

func TestRecordKeepsEarlierResultsAndForgetsGonePeers(t *testing.T) {
	ts := targets(3)
	p := &prober{}
	p.record(ts, answered(ts, "node-0002"))
	all := p.record(ts[:2], answered(ts[:1])) // node-0002 left; node-0001 not probed this time
	if len(all) != 2 || !all["node-0000"].Reachable || !all["node-0001"].Reachable {
		t.Errorf("latest results %+v, want node-0000 and node-0001, both answering", all)
	}
}
