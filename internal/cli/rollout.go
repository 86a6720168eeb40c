package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/spf13/cobra"

	"github.com/routemode/routemode/api/v1alpha1"
	"github.com/routemode/routemode/internal/specvalidate"
)

func newRolloutCommand(g *globalOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "rollout",
		Short: "Pause, resume or undo the node-by-node rollout of a mode change",
	}
	cmd.AddCommand(newPauseCommand(g, true), newPauseCommand(g, false), newUndoCommand(g))
	return cmd
}

func newPauseCommand(g *globalOptions, pause bool) *cobra.Command {
	use, short := "resume", "Let a paused rollout start its next batch of nodes"
	if pause {
		use, short = "pause", "Stop the rollout before its next batch of nodes (spec.rollout.paused: true)"
	}
	return &cobra.Command{
		Use:   use,
		Short: short,
		Long: short + `.

Nodes that are switching when the rollout is paused finish their step; no
new batch starts until the rollout is resumed. With GitOps, set
spec.rollout.paused in Git instead, or the next sync reverts this.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, host, err := g.client()
			if err != nil {
				return err
			}
			rm, err := getRoutingMode(cmd.Context(), c, host)
			if err != nil {
				return err
			}
			if rm.Spec.Rollout.Paused == pause {
				fmt.Fprintf(g.streams.Out, "routingmode/%s is already %s: nothing changed\n", rm.Name, pausedWord(pause))
				return nil
			}
			before := rm.DeepCopy()
			rm.Spec.Rollout.Paused = pause
			// A merge patch touches only spec.rollout.paused, and the
			// resourceVersion in it makes the server refuse the patch if
			// someone changed the object since it was read.
			patch := client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{})
			if err := c.Patch(cmd.Context(), rm, patch); err != nil {
				return explainWriteError(err)
			}
			if pause {
				msg := "nodes that are switching finish their step; no new batch starts. Resume with routemodectl rollout resume"
				if rm.Status.Phase == v1alpha1.PhaseComplete && rm.Status.ObservedGeneration == rm.Generation-1 {
					msg = "no rollout is running; the next change of spec waits for routemodectl rollout resume"
				}
				fmt.Fprintf(g.streams.Out, "routingmode/%s paused: %s\n", rm.Name, msg)
			} else {
				fmt.Fprintf(g.streams.Out, "routingmode/%s resumed: the operator starts the next batch of nodes\n", rm.Name)
			}
			return nil
		},
	}
}

func pausedWord(paused bool) string {
	if paused {
		return "paused"
	}
	return "not paused"
}

func explainWriteError(err error) error {
	switch {
	case apierrors.IsConflict(err):
		return fmt.Errorf("the RoutingMode changed while this command ran (%v): nothing was changed; run the command again", err)
	case apierrors.IsForbidden(err):
		return fmt.Errorf("not allowed to change the RoutingMode: %w; ask for patch and update access to routingmodes.routemode.io", err)
	case apierrors.IsInvalid(err):
		return fmt.Errorf("the API server refused the change: %w", err)
	default:
		return fmt.Errorf("cannot change the RoutingMode: %w", err)
	}
}

func newUndoCommand(g *globalOptions) *cobra.Command {
	var dryRun bool
	cmd := &cobra.Command{
		Use:   "undo",
		Short: "Go back to the last mode whose rollout completed",
		Long: `Restores the routing fields of the RoutingMode (tunnel, tunnelPort,
nativeRoutingCIDR, autoDirectNodeRoutes, hostRouting) to the last spec whose
rollout completed, which the operator records in the annotation
` + v1alpha1.AnnotationLastAppliedSpec + `. The rollout settings (maxUnavailable,
healthCheckTimeout, paused, autoRollback) are kept: they say how to roll,
and the way back rolls the same way, node by node.

With GitOps, revert the commit instead, or the next sync reapplies the change.`,
		Example: `  routemodectl rollout undo --dry-run
  routemodectl rollout undo`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return g.undo(cmd.Context(), dryRun)
		},
	}
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "print the spec undo would apply, and change nothing")
	return cmd
}

func (g *globalOptions) undo(ctx context.Context, dryRun bool) error {
	c, host, err := g.client()
	if err != nil {
		return err
	}
	rm, err := getRoutingMode(ctx, c, host)
	if err != nil {
		return err
	}
	prev, err := lastAppliedSpec(rm)
	if err != nil {
		return err
	}
	if routingFields(rm.Spec) == routingFields(prev) {
		fmt.Fprintf(g.streams.Out, "routingmode/%s already asks for the last completed mode (%s): nothing to undo\n", rm.Name, describeSpec(prev))
		return nil
	}
	next := rm.DeepCopy()
	next.Spec = withRoutingFields(rm.Spec, prev)
	if err := specvalidate.Validate(next.Spec); err != nil {
		return fmt.Errorf("the spec in annotation %s is not valid for this CRD (%w): nothing was changed; edit the RoutingMode by hand", v1alpha1.AnnotationLastAppliedSpec, err)
	}
	if dryRun {
		fmt.Fprintf(g.streams.Out, "routingmode/%s would go back from: %s\n", rm.Name, describeSpec(rm.Spec))
		fmt.Fprintf(g.streams.Out, "                          to:   %s\n", describeSpec(next.Spec))
		fmt.Fprintln(g.streams.Out, "(dry run: nothing changed)")
		return nil
	}
	// Update, not patch: the whole routing part of spec is replaced
	// (a merge patch cannot express "remove nativeRoutingCIDR" cleanly),
	// and the resourceVersion read above guards against a concurrent edit.
	if err := c.Update(ctx, next); err != nil {
		return explainWriteError(err)
	}
	fmt.Fprintf(g.streams.Out, "routingmode/%s rolled back to: %s\n", rm.Name, describeSpec(next.Spec))
	if next.Spec.Rollout.Paused {
		fmt.Fprintln(g.streams.Out, "The rollout is paused: run routemodectl rollout resume to start rolling back")
	}
	return nil
}

// lastAppliedSpec reads the annotation the operator writes on Complete.
func lastAppliedSpec(rm *v1alpha1.RoutingMode) (v1alpha1.RoutingModeSpec, error) {
	raw, ok := rm.Annotations[v1alpha1.AnnotationLastAppliedSpec]
	if !ok || strings.TrimSpace(raw) == "" {
		return v1alpha1.RoutingModeSpec{}, fmt.Errorf("routingmode/%s has no previous completed mode to go back to (annotation %s is missing: no rollout has completed yet); to change the mode, edit spec with kubectl edit routingmode %s", rm.Name, v1alpha1.AnnotationLastAppliedSpec, rm.Name)
	}
	var spec v1alpha1.RoutingModeSpec
	dec := json.NewDecoder(strings.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&spec); err != nil {
		return v1alpha1.RoutingModeSpec{}, fmt.Errorf("annotation %s on routingmode/%s is not a RoutingMode spec (%v): nothing was changed; edit the RoutingMode by hand", v1alpha1.AnnotationLastAppliedSpec, rm.Name, err)
	}
	return spec, nil
}

// routing is the part of a spec that says what mode, as opposed to how to
// roll it out.
type routing struct {
	tunnel      v1alpha1.Tunnel
	port        int32
	cidr        string
	adnr        bool
	hostRouting v1alpha1.HostRouting
}

// routingFields compares specs with the CRD defaults filled in, so an
// annotation written with defaults equals a spec written without.
func routingFields(s v1alpha1.RoutingModeSpec) routing {
	r := routing{s.Tunnel, s.TunnelPort, s.NativeRoutingCIDR, s.AutoDirectNodeRoutes, s.HostRouting}
	if r.tunnel == "" {
		r.tunnel = v1alpha1.TunnelVXLAN
	}
	if r.port == 0 {
		r.port = v1alpha1.DefaultTunnelPort
	}
	if r.hostRouting == "" {
		r.hostRouting = v1alpha1.HostRoutingLegacy
	}
	return r
}

func withRoutingFields(cur, prev v1alpha1.RoutingModeSpec) v1alpha1.RoutingModeSpec {
	out := cur
	out.Tunnel = prev.Tunnel
	out.TunnelPort = prev.TunnelPort
	out.NativeRoutingCIDR = prev.NativeRoutingCIDR
	out.AutoDirectNodeRoutes = prev.AutoDirectNodeRoutes
	out.HostRouting = prev.HostRouting
	return out
}
