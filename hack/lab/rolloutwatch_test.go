package lab

import (
	"strings"
	"testing"

	"github.com/routemode/routemode/api/v1alpha1"
)

func TestSwitchedOnce(t *testing.T) {
	p, s, f := v1alpha1.StepPrepare, v1alpha1.StepSwitch, v1alpha1.StepFinalize
	for _, tc := range []struct {
		name  string
		steps map[string][]v1alpha1.RolloutStep
		want  string
	}{
		{"each once", map[string][]v1alpha1.RolloutStep{"a": {p, s, f}, "b": {p, s, f}}, ""},
		{"repeated", map[string][]v1alpha1.RolloutStep{"a": {p, s, f, s}, "b": {p, s, f}}, "a was told to Switch 2 times"},
		{"skipped", map[string][]v1alpha1.RolloutStep{"a": {p, f}, "b": {p, s, f}}, "a was told to Switch 0 times"},
		{"a node unseen", map[string][]v1alpha1.RolloutStep{"a": {p, s, f}}, "steps seen for 1 nodes"},
	} {
		err := SwitchedOnce(tc.steps, 2)
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%s: %v; want %q", tc.name, err, tc.want)
		}
	}
}

// The adoption line is found as the agent writes it (the netns lab's
// supervised log) and as the kubelet keeps it (real nodes' pod logs).
func TestFindAdoption(t *testing.T) {
	line := `{"level":"info","msg":"Adopted the node's kernel state","generation":7,"step":"Switch","changes":["route replace 10.0.1.0/24"]}`
	for _, log := range []string{
		"{\"msg\":\"Started agent\"}\n" + line + "\n",
		"2026-12-02T07:03:43.73Z stderr F {\"msg\":\"Started agent\"}\n2026-12-02T07:03:44.1Z stderr F " + line + "\n",
	} {
		a, found, err := FindAdoption(log)
		if !found || err != nil || a.Generation != 7 || a.Step != "Switch" || len(a.Changes) != 1 {
			t.Errorf("FindAdoption(%q) = %+v, %v, %v", log, a, found, err)
		}
		if note, err := a.Versus(7); err == nil || !strings.Contains(note, "1 changes") {
			t.Errorf("a change at an applied generation: %q, %v; want an error", note, err)
		}
		if note, err := a.Versus(6); err != nil || !strings.Contains(note, "applying Switch") {
			t.Errorf("changes for a new generation: %q, %v; want no error", note, err)
		}
	}
	if _, found, _ := FindAdoption("{\"msg\":\"Started agent\"}\n"); found {
		t.Error("found an adoption in a log without one")
	}
}
