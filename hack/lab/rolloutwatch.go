package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"

	"github.com/routemode/routemode/api/v1alpha1"
)

// Where a rollout stands, followed from the RoutingNodes a watch delivers:
// the chaos suites inject their faults at these points, on the netns
// lab's nodes and on real ones.

// RolloutPoint is where in a rollout a fault is injected, recognised from
// the RoutingNodes a watch delivers, never from elapsed time.
type RolloutPoint int

const (
	// FromStart: the fault is on before the new spec is applied.
	FromStart RolloutPoint = iota
	// AfterPrepare: every node applied Prepare; the fault hits the last
	// node (by name) not yet told to Switch.
	AfterPrepare
	// FirstSwitching: the first node is told to Switch; the fault hits it.
	FirstSwitching
	// LastSwitching: the last node is told to Switch; the fault hits it.
	LastSwitching
	// Finalizing: a node that switched applied Finalize; the fault hits it.
	Finalizing
)

func (p RolloutPoint) String() string {
	return [...]string{"whole rollout", "after Prepare of all nodes", "first batch switching", "last batch switching", "during Finalize"}[p]
}

// appliedStep says whether rn's agent reports its current generation
// applied.
func appliedStep(rn *v1alpha1.RoutingNode) bool {
	return rn.Status.ObservedGeneration == rn.Generation && meta.IsStatusConditionTrue(rn.Status.Conditions, v1alpha1.ConditionDatapathApplied)
}

// PointWatch follows the RoutingNodes through one rollout: the steps each
// node was given, in order, and the order nodes were told to Switch.
type PointWatch struct {
	mu       sync.Mutex
	seen     map[string][]v1alpha1.RolloutStep
	latest   map[string]*v1alpha1.RoutingNode
	switched []string
	// first is the first datapath each node was given in the watch, and
	// which peers sent natively at that moment.
	first   map[string]FirstDatapath
	changed chan struct{}
	// Stop ends the watch; safe to call more than once.
	Stop func()
}

// FirstDatapath is the first datapath a node was given, with the peers
// that sent natively then: asked to (spec) or, as their agents last
// reported, still doing so (status), e.g. told to switch but not yet done.
type FirstDatapath struct {
	Datapath    *v1alpha1.NodeDatapath
	NativePeers []string
}

// ReceivesBothWays is nil when a node that joined mid-rollout, a peer
// still sending natively, was given a first datapath that receives both
// ways: the tunnel device and loose rp_filter. Without such a peer the
// rollout was not mid-way (the operator rightly gives a node that joins
// then the target alone), and that is an error too: the case was not
// made.
func (f FirstDatapath) ReceivesBothWays(node string) error {
	if len(f.NativePeers) == 0 {
		return fmt.Errorf("no peer sent natively when %s was given its first datapath %+v: the rollout was not mid-way", node, f.Datapath)
	}
	if dp := f.Datapath; dp.Tunnel != v1alpha1.TunnelVXLAN || !dp.LooseRPFilter {
		return fmt.Errorf("%s's first datapath %+v while %v sent natively; want it to receive both ways (VXLAN and loose rp_filter)", node, dp, f.NativePeers)
	}
	return nil
}

// sendsNatively says whether rn's node sends natively or is asked to.
func sendsNatively(rn *v1alpha1.RoutingNode) bool {
	return rn.Spec.Datapath != nil && rn.Spec.Datapath.SendMode == v1alpha1.SendNative ||
		rn.Status.Datapath.SendMode == v1alpha1.SendNative
}

// WatchPoints starts following the RoutingNodes; started before the spec
// is applied, the first events are the nodes as the previous rollout left
// them. Stop ends it.
func (l *Lab) WatchPoints(ctx context.Context) (*PointWatch, error) {
	wc, err := l.watchClient()
	if err != nil {
		return nil, err
	}
	watcher, err := wc.Watch(ctx, &v1alpha1.RoutingNodeList{})
	if err != nil {
		return nil, err
	}
	w := &PointWatch{seen: map[string][]v1alpha1.RolloutStep{}, latest: map[string]*v1alpha1.RoutingNode{},
		first: map[string]FirstDatapath{}, changed: make(chan struct{}, 1)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ev := range watcher.ResultChan() {
			rn, ok := ev.Object.(*v1alpha1.RoutingNode)
			if !ok {
				continue
			}
			w.mu.Lock()
			if s := w.seen[rn.Name]; len(s) == 0 || s[len(s)-1] != rn.Spec.Step {
				w.seen[rn.Name] = append(s, rn.Spec.Step)
				if rn.Spec.Step == v1alpha1.StepSwitch && !slices.Contains(w.switched, rn.Name) {
					w.switched = append(w.switched, rn.Name)
				}
			}
			w.latest[rn.Name] = rn
			if _, ok := w.first[rn.Name]; !ok && rn.Spec.Datapath != nil {
				f := FirstDatapath{Datapath: rn.Spec.Datapath}
				for name, peer := range w.latest {
					if name != rn.Name && sendsNatively(peer) {
						f.NativePeers = append(f.NativePeers, name)
					}
				}
				w.first[rn.Name] = f
			}
			w.mu.Unlock()
			select {
			case w.changed <- struct{}{}:
			default:
			}
		}
	}()
	w.Stop = sync.OnceFunc(func() {
		watcher.Stop()
		<-done
	})
	return w, nil
}

// target is the node p hits once the rollout reached p, "" before.
func (w *PointWatch) target(p RolloutPoint, nodes int) string {
	w.mu.Lock()
	defer w.mu.Unlock()
	switch p {
	case AfterPrepare:
		if len(w.latest) < nodes {
			return ""
		}
		last := ""
		for _, name := range slices.Sorted(maps.Keys(w.latest)) {
			rn := w.latest[name]
			if !slices.Contains(w.seen[name], v1alpha1.StepPrepare) {
				return ""
			}
			if rn.Spec.Step == v1alpha1.StepPrepare {
				if !appliedStep(rn) {
					return ""
				}
				last = name
			}
		}
		return last
	case FirstSwitching:
		if len(w.switched) > 0 {
			return w.switched[0]
		}
	case LastSwitching:
		if len(w.switched) == nodes {
			return w.switched[nodes-1]
		}
	case Finalizing:
		for _, name := range w.switched {
			if rn := w.latest[name]; rn.Spec.Step == v1alpha1.StepFinalize && appliedStep(rn) {
				return name
			}
		}
	}
	return ""
}

// WaitFor returns the node p hits once the rollout reached p.
func (w *PointWatch) WaitFor(p RolloutPoint, nodes int, limit time.Duration) (node string, err error) {
	err = w.until(fmt.Sprintf("the rollout to reach %q", p), limit, func() bool {
		node = w.target(p, nodes)
		return node != ""
	})
	return node, err
}

// until waits until ok, which takes w.mu itself, holds after an event.
func (w *PointWatch) until(what string, limit time.Duration, ok func() bool) error {
	timeout := time.After(limit)
	for !ok() {
		select {
		case <-w.changed:
		case <-timeout:
			w.mu.Lock()
			defer w.mu.Unlock()
			return fmt.Errorf("waited %s for %s (steps seen: %v)", limit, what, w.seen)
		}
	}
	return nil
}

// Joined waits until node is given its first datapath and returns it.
func (w *PointWatch) Joined(node string, limit time.Duration) (FirstDatapath, error) {
	var f FirstDatapath
	err := w.until(node+" to be given its first datapath", limit, func() bool {
		w.mu.Lock()
		defer w.mu.Unlock()
		f = w.first[node]
		return f.Datapath != nil
	})
	return f, err
}

// Steps stops the watch and returns the steps each node was given.
func (w *PointWatch) Steps() map[string][]v1alpha1.RolloutStep {
	w.Stop()
	return w.Snapshot()
}

// Snapshot is the steps each node was given so far, the watch going on.
func (w *PointWatch) Snapshot() map[string][]v1alpha1.RolloutStep {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := map[string][]v1alpha1.RolloutStep{}
	for k, v := range w.seen {
		out[k] = slices.Clone(v)
	}
	return out
}

// SwitchedOnce is nil when every one of the rollout's nodes was told to
// Switch exactly once in steps: none skipped, none repeated.
func SwitchedOnce(steps map[string][]v1alpha1.RolloutStep, nodes int) error {
	var errs []error
	for _, node := range slices.Sorted(maps.Keys(steps)) {
		if n := count(steps[node], v1alpha1.StepSwitch); n != 1 {
			errs = append(errs, fmt.Errorf("%s was told to Switch %d times (steps %v); want once", node, n, steps[node]))
		}
	}
	if len(steps) != nodes {
		errs = append(errs, fmt.Errorf("steps seen for %d nodes (%v); want all %d", len(steps), steps, nodes))
	}
	return errors.Join(errs...)
}

func count[T comparable](s []T, v T) int {
	n := 0
	for _, x := range s {
		if x == v {
			n++
		}
	}
	return n
}

// Adoption is the agent's log line for its first reconcile since it
// started: the generation it found, and what it changed in the kernel.
type Adoption struct {
	Generation int64    `json:"generation"`
	Step       string   `json:"step"`
	Changes    []string `json:"changes"`
}

// FindAdoption finds the adoption line in an agent's log, as the agent
// wrote it or as the kubelet keeps it (after the runtime's prefix).
func FindAdoption(log string) (Adoption, bool, error) {
	var a Adoption
	for line := range strings.SplitSeq(log, "\n") {
		if i := strings.Index(line, "{"); i >= 0 && strings.Contains(line, `"msg":"Adopted the node's kernel state"`) {
			return a, true, json.Unmarshal([]byte(line[i:]), &a)
		}
	}
	return a, false, nil
}

// Describe says what the restarted agent found and did, against had, the
// generation the killed agent had reported applied.
func (a Adoption) Describe(had int64) string {
	return fmt.Sprintf("generation %d (step %s), %d changes %q; the killed one had reported generation %d applied",
		a.Generation, a.Step, len(a.Changes), a.Changes, had)
}

// Versus is the chaos table's note on the adoption, and an error when the
// restarted agent changed the kernel at a generation the killed one had
// applied: the kernel kept it all, so there was nothing to change.
func (a Adoption) Versus(had int64) (string, error) {
	if a.Generation != had {
		return fmt.Sprintf("restarted agent: %d changes applying %s (generation %d; the killed one had applied %d)", len(a.Changes), a.Step, a.Generation, had), nil
	}
	if len(a.Changes) != 0 {
		return fmt.Sprintf("restarted agent: %d changes (generation %d already applied)", len(a.Changes), had),
			fmt.Errorf("the restarted agent changed the kernel at generation %d, which the killed one had applied: %q", had, a.Changes)
	}
	return fmt.Sprintf("restarted agent: no change (generation %d already applied)", had), nil
}
