package controller

import (
	"fmt"
	"strings"
	"testing"

	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/routemode/routemode/api/v1alpha1"
)

// TestPeerSummaryValidation writes peer summaries through the real API
// server: the CRD's rules keep the bounded report consistent, whoever
// writes it.
func TestPeerSummaryValidation(t *testing.T) {
	full := make([]v1alpha1.PeerStatus, v1alpha1.MaxListedPeers)
	for i := range full {
		full[i] = v1alpha1.PeerStatus{Node: fmt.Sprintf("p-%d", i), Direct: true}
	}
	for name, tc := range map[string]struct {
		s    v1alpha1.PeerSummary
		want string // "" means accepted
	}{
		"counts only":                     {s: v1alpha1.PeerSummary{Total: 4999, Probed: 4999}},
		"16 listed and 4 counted":         {s: v1alpha1.PeerSummary{Total: 4999, Probed: 4999, Unreachable: 20, Problems: full, ProblemsNotListed: 4}},
		"17 listed":                       {s: v1alpha1.PeerSummary{Total: 4999, Problems: append(full, v1alpha1.PeerStatus{Node: "p-16"})}, want: "must have at most 16 items"},
		"counted before the list is full": {s: v1alpha1.PeerSummary{Total: 4999, Problems: full[:2], ProblemsNotListed: 3}, want: "list 16 problems before counting the rest"},
		"more unreachable than probed":    {s: v1alpha1.PeerSummary{Total: 10, Probed: 2, Unreachable: 3}, want: "peer counts are inconsistent"},
		"more indirect than peers":        {s: v1alpha1.PeerSummary{Total: 1, NotDirect: 2}, want: "peer counts are inconsistent"},
	} {
		t.Run(name, func(t *testing.T) {
			rn := makeRoutingNode(t, "cel-"+strings.ReplaceAll(name, " ", "-"), nil)
			base := rn.DeepCopy()
			s := tc.s
			rn.Status.PeerSummary = &s
			err := env.Client.Status().Patch(t.Context(), rn, client.MergeFrom(base))
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("refused: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("got %v, want a refusal saying %q", err, tc.want)
			}
		})
	}
}
