package gitopshealth

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/yaml"
)

// repo is the module root, for the published files under hack/.
const repo = "../.."

// fixtureCase is what Argo CD and kstatus (Flux) must report for one
// RoutingMode status fixture in testdata/.
type fixtureCase struct {
	argo        string
	argoMessage string // a substring of the Lua message
	kstatus     status.Status
}

var fixtures = map[string]fixtureCase{
	// A fresh object has no status: Argo waits. kstatus calls an object
	// without conditions or observedGeneration Current, a known limit
	// (docs/gitops.md): Flux only waits correctly once the operator has
	// written status, which it does on its first reconcile.
	"fresh.yaml":            {ArgoProgressing, "Waiting for the routemode operator to report status", status.CurrentStatus},
	"empty-conditions.yaml": {ArgoProgressing, "Waiting for the routemode operator", status.CurrentStatus},
	"preflight.yaml":        {ArgoProgressing, "Preflight: checking that 5 nodes", status.InProgressStatus},
	"preparing.yaml":        {ArgoProgressing, "Preparing: 2/5 nodes receive both ways", status.InProgressStatus},
	"switching.yaml":        {ArgoProgressing, "Switching: 3/5 nodes send natively", status.InProgressStatus},
	// Paused: Argo shows Suspended; kstatus has no "suspended", Ready=False
	// keeps it InProgress, so Flux waits (until its timeout).
	"paused.yaml":               {ArgoSuspended, "Paused after 2/5 nodes", status.InProgressStatus},
	"paused-batch-running.yaml": {ArgoSuspended, "pausing after this batch", status.InProgressStatus},
	"stalled-preflight.yaml":    {ArgoDegraded, "worker-4 reaches worker-1 only through gateway", status.FailedStatus},
	"stalled-rollback.yaml":     {ArgoDegraded, "rolled back to Tunnel", status.FailedStatus},
	"stalled-paused.yaml":       {ArgoDegraded, "worker-2 failed its health check", status.FailedStatus},
	"complete.yaml":             {ArgoHealthy, "5/5 nodes route natively", status.CurrentStatus},
	// Paused after completion: nothing is waiting, so healthy.
	"complete-paused.yaml": {ArgoHealthy, "5/5 nodes route natively", status.CurrentStatus},
	// Ready=True describes generation 3, but the spec is generation 4.
	"old-generation.yaml": {ArgoProgressing, "observe generation 4 (status describes generation 3)", status.InProgressStatus},

	// Status as the lead's operator really writes it (tunnel -> native, a
	// pause, then a host routing change).
	"operator-switching.yaml":   {ArgoProgressing, "3/3 nodes updated: the agent on worker-3 has not applied generation 4 yet", status.InProgressStatus},
	"operator-paused.yaml":      {ArgoSuspended, "paused with 1 of 3 nodes still to switch", status.InProgressStatus},
	"operator-complete.yaml":    {ArgoHealthy, "all 3 nodes run native routing, host routing legacy", status.CurrentStatus},
	"operator-hostrouting.yaml": {ArgoProgressing, "2/3 nodes updated", status.InProgressStatus},
}

func loadFixture(t *testing.T, name string) map[string]any {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	var obj map[string]any
	if err := yaml.Unmarshal(raw, &obj); err != nil {
		t.Fatal(err)
	}
	// The API server and Argo CD hand integers over as int64, as
	// unstructured decoding does; sigs.k8s.io/yaml gives float64.
	return intify(obj).(map[string]any)
}

func intify(v any) any {
	switch v := v.(type) {
	case map[string]any:
		for k, e := range v {
			v[k] = intify(e)
		}
		return v
	case []any:
		for i, e := range v {
			v[i] = intify(e)
		}
		return v
	case float64:
		if v == float64(int64(v)) {
			return int64(v)
		}
		return v
	default:
		return v
	}
}

func readScript(t *testing.T) string {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(repo, "hack", "argocd", "health.lua"))
	if err != nil {
		t.Fatal(err)
	}
	return string(raw)
}

func TestEveryFixtureHasACase(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join("testdata", "*.yaml"))
	for _, f := range files {
		if _, ok := fixtures[filepath.Base(f)]; !ok {
			t.Errorf("testdata/%s has no expected result in fixtures", filepath.Base(f))
		}
	}
	if len(files) != len(fixtures) {
		t.Errorf("%d fixture files, %d cases", len(files), len(fixtures))
	}
}

func TestArgoCDHealthLua(t *testing.T) {
	script := readScript(t)
	for name, tc := range fixtures {
		t.Run(name, func(t *testing.T) {
			h, err := EvalArgoHealth(script, loadFixture(t, name))
			if err != nil {
				t.Fatal(err)
			}
			if h.Status != tc.argo {
				t.Errorf("status %s, want %s (message %q)", h.Status, tc.argo, h.Message)
			}
			if !strings.Contains(h.Message, tc.argoMessage) {
				t.Errorf("message %q lacks %q", h.Message, tc.argoMessage)
			}
		})
	}
}

func TestKstatus(t *testing.T) {
	for name, tc := range fixtures {
		t.Run(name, func(t *testing.T) {
			res, err := Kstatus(loadFixture(t, name))
			if err != nil {
				t.Fatal(err)
			}
			if res.Status != tc.kstatus {
				t.Errorf("kstatus %s, want %s (message %q)", res.Status, tc.kstatus, res.Message)
			}
		})
	}
}

// TestArgoAndKstatusAgree checks the two readings never contradict each
// other: Healthy only with Current, Degraded only with Failed, and
// Progressing or Suspended with InProgress — except for an object without
// status, where kstatus cannot know better (see fixtures).
func TestArgoAndKstatusAgree(t *testing.T) {
	script := readScript(t)
	want := map[string]status.Status{
		ArgoHealthy:     status.CurrentStatus,
		ArgoDegraded:    status.FailedStatus,
		ArgoProgressing: status.InProgressStatus,
		ArgoSuspended:   status.InProgressStatus,
	}
	for name := range fixtures {
		obj := loadFixture(t, name)
		h, err := EvalArgoHealth(script, obj)
		if err != nil {
			t.Fatal(err)
		}
		k, err := Kstatus(obj)
		if err != nil {
			t.Fatal(err)
		}
		conds, _, _ := nestedSlice(obj, "status", "conditions")
		if len(conds) == 0 {
			continue // kstatus: Current without any condition
		}
		if want[h.Status] != k.Status {
			t.Errorf("%s: Argo CD %s but kstatus %s", name, h.Status, k.Status)
		}
	}
}

func nestedSlice(obj map[string]any, path ...string) ([]any, bool, error) {
	var cur any = obj
	for _, p := range path {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil, false, nil
		}
		cur = m[p]
	}
	s, ok := cur.([]any)
	return s, ok, nil
}

// TestArgoCDConfigMapInlinesScript keeps hack/argocd/argocd-cm.yaml in step
// with health.lua. UPDATE_ARGOCD_CM=1 rewrites the inline copy.
func TestArgoCDConfigMapInlinesScript(t *testing.T) {
	const key = "resource.customizations.health.routemode.io_RoutingMode"
	path := filepath.Join(repo, "hack", "argocd", "argocd-cm.yaml")
	script := readScript(t)
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if os.Getenv("UPDATE_ARGOCD_CM") != "" {
		head, _, ok := strings.Cut(string(raw), "  "+key+": |\n")
		if !ok {
			t.Fatalf("%s has no %s key to update", path, key)
		}
		var b strings.Builder
		b.WriteString(head + "  " + key + ": |\n")
		for _, line := range strings.SplitAfter(script, "\n") {
			if strings.TrimSpace(line) != "" {
				b.WriteString("    ")
			}
			b.WriteString(line)
		}
		if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
		raw = []byte(b.String())
	}
	var cm struct {
		Kind string            `json:"kind"`
		Data map[string]string `json:"data"`
	}
	if err := yaml.Unmarshal(raw, &cm); err != nil {
		t.Fatal(err)
	}
	if cm.Kind != "ConfigMap" {
		t.Fatalf("%s is a %q, want a ConfigMap", path, cm.Kind)
	}
	if got := cm.Data[key]; got != script {
		t.Fatalf("the script inlined in %s differs from hack/argocd/health.lua: run UPDATE_ARGOCD_CM=1 go test ./internal/gitopshealth/", path)
	}
}

func TestArgoHarnessRejectsBadScripts(t *testing.T) {
	for script, want := range map[string]string{
		`return "Healthy"`:                           "did not return a table",
		`return {status = "Fine"}`:                   `status "Fine"`,
		`error("boom")`:                              "boom",
		`return {status = string.upper("x")}`:        "string", // Argo CD does not open the string library
		`local t = {} t.status = "Healthy" return t`: "",
	} {
		_, err := EvalArgoHealth(script, map[string]any{})
		switch {
		case want == "" && err != nil:
			t.Errorf("%s: %v", script, err)
		case want != "" && (err == nil || !strings.Contains(err.Error(), want)):
			t.Errorf("%s: want an error containing %q, got %v", script, want, err)
		}
	}
}

// TestFluxExample checks the published Flux Kustomization health-checks the
// RoutingMode and allows a long rollout.
func TestFluxExample(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join(repo, "hack", "flux", "kustomization.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	type ref struct{ APIVersion, Kind, Name string }
	found := false
	for _, doc := range strings.Split(string(raw), "\n---\n") {
		var k struct {
			Kind string `json:"kind"`
			Spec struct {
				Timeout      string `json:"timeout"`
				Wait         bool   `json:"wait"`
				Prune        bool   `json:"prune"`
				HealthChecks []ref  `json:"healthChecks"`
			} `json:"spec"`
		}
		if err := yaml.Unmarshal([]byte(doc), &k); err != nil {
			t.Fatal(err)
		}
		for _, hc := range k.Spec.HealthChecks {
			if hc != (ref{"routemode.io/v1alpha1", "RoutingMode", "default"}) {
				continue
			}
			found = true
			d, err := time.ParseDuration(k.Spec.Timeout)
			if err != nil || d < time.Hour {
				t.Errorf("timeout %q: want at least 1h for a node-by-node rollout", k.Spec.Timeout)
			}
			if k.Spec.Prune {
				t.Error("prune must be false for the RoutingMode's Kustomization")
			}
		}
	}
	if !found {
		t.Fatal("no Kustomization health-checks routemode.io/v1alpha1 RoutingMode default")
	}
}
