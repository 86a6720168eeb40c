package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/routemode/routemode/api/v1alpha1"
	"github.com/routemode/routemode/internal/scheme"
)

// Open attaches to the running lab in cfg.Dir.
func Open(cfg Config) (*Lab, error) {
	dir, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return nil, err
	}
	cfg.Dir = dir
	raw, err := os.ReadFile(filepath.Join(dir, "state.json"))
	if err != nil {
		return nil, fmt.Errorf("no lab in %s (start one with `make lab-up`): %w", dir, err)
	}
	l := &Lab{cfg: cfg, cp: &controlPlane{dir: filepath.Join(dir, "controlplane")}}
	if err := json.Unmarshal(raw, &l.state); err != nil {
		return nil, err
	}
	l.cfg.Prefix, l.Nodes, l.cp.apiPort = l.state.Prefix, l.state.Nodes, l.state.APIPort
	if l.cp.caPEM, err = os.ReadFile(filepath.Join(l.cp.dir, "ca.crt")); err != nil {
		return nil, err
	}
	tokens, err := os.ReadFile(filepath.Join(l.cp.dir, "tokens.csv"))
	if err != nil {
		return nil, err
	}
	l.cp.adminTok, _, _ = strings.Cut(string(tokens), ",")
	return l, nil
}

// Client is an admin client of the lab's API server.
func (l *Lab) Client() (client.Client, error) { return l.watchClient() }

// watchClient is Client that also watches.
func (l *Lab) watchClient() (client.WithWatch, error) {
	s, err := scheme.New()
	if err != nil {
		return nil, err
	}
	return client.NewWithWatch(l.cp.restConfig(), client.Options{Scheme: s})
}

// Pods lists the lab's pods.
func (l *Lab) Pods() []PodState { return l.state.Pods }

// Apply applies a manifest with kubectl, as a user would.
func (l *Lab) Apply(path string) (string, error) { return l.Kubectl("apply", "-f", path) }

// RoutingMode reads the cluster's RoutingMode and RoutingNodes.
func (l *Lab) RoutingMode(ctx context.Context, c client.Client) (*v1alpha1.RoutingMode, []v1alpha1.RoutingNode, error) {
	rm := &v1alpha1.RoutingMode{}
	if err := c.Get(ctx, client.ObjectKey{Name: v1alpha1.RoutingModeName}, rm); err != nil {
		return nil, nil, err
	}
	var rns v1alpha1.RoutingNodeList
	if err := c.List(ctx, &rns); err != nil {
		return nil, nil, err
	}
	return rm, rns.Items, nil
}

// Progress is one line of a rollout's progress, for people.
func Progress(rm *v1alpha1.RoutingMode, rns []v1alpha1.RoutingNode) string {
	var b strings.Builder
	if rm.Status.ObservedGeneration != rm.Generation {
		b.WriteString("(operator has not seen the new spec yet)")
	} else {
		fmt.Fprintf(&b, "%-10s %-5s", rm.Status.Phase, rm.Status.Progress)
	}
	for _, rn := range rns {
		applied := "…"
		if c := meta.FindStatusCondition(rn.Status.Conditions, v1alpha1.ConditionPeersHealthy); c != nil &&
			rn.Status.ObservedGeneration == rn.Generation && c.Status == "True" {
			applied = "ok"
		}
		send, host := rn.Status.Datapath.SendMode, rn.Status.Datapath.HostRouting
		fmt.Fprintf(&b, " | %s %s→%s/%s %s", rn.Name, rn.Spec.Step, orDash(string(send)), orDash(string(host)), applied)
	}
	if c := meta.FindStatusCondition(rm.Status.Conditions, v1alpha1.ConditionStalled); c != nil && c.Status == "True" {
		fmt.Fprintf(&b, "\n    Stalled: %s: %s", c.Reason, c.Message)
	}
	return b.String()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// WaitRollout waits until the RoutingMode is Ready (or Stalled) at its
// current generation, calling onChange with every new progress line.
func (l *Lab) WaitRollout(ctx context.Context, c client.Client, limit time.Duration, onChange func(string)) (*v1alpha1.RoutingMode, error) {
	deadline := time.Now().Add(limit)
	last := ""
	for time.Now().Before(deadline) {
		rm, rns, err := l.RoutingMode(ctx, c)
		if err == nil {
			if line := Progress(rm, rns); line != last {
				last = line
				if onChange != nil {
					onChange(line)
				}
			}
			if rm.Status.ObservedGeneration == rm.Generation {
				if meta.IsStatusConditionTrue(rm.Status.Conditions, v1alpha1.ConditionReady) {
					return rm, nil
				}
				if meta.IsStatusConditionTrue(rm.Status.Conditions, v1alpha1.ConditionStalled) {
					return rm, fmt.Errorf("the rollout stalled: %s", meta.FindStatusCondition(rm.Status.Conditions, v1alpha1.ConditionStalled).Message)
				}
			}
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil, fmt.Errorf("the rollout did not finish within %s: %s", limit, last)
}

// Bootstrap applies a first RoutingMode, waits for it and, on the lab's
// own nodes, wires the pods; real nodes' pods are the workloads users run.
func (l *Lab) Bootstrap(ctx context.Context, sample string) error {
	c, err := l.Client()
	if err != nil {
		return err
	}
	if _, err := l.Apply(sample); err != nil {
		return err
	}
	if err := l.waitFirstRollout(ctx, c); err != nil || l.Real() {
		return err
	}
	return l.AddPods(ctx)
}

// waitFirstRollout waits for the first RoutingMode to reach every node. On
// real nodes the operator and the agents are pods: nothing rolls out
// before the kubelets started them.
func (l *Lab) waitFirstRollout(ctx context.Context, c client.Client) error {
	if l.Real() {
		if err := l.WaitInstalled(5 * time.Minute); err != nil {
			return err
		}
	}
	_, err := l.WaitRollout(ctx, c, 3*time.Minute, nil)
	return err
}
