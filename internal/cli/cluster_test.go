package cli

// These tests run routemodectl against a real kube-apiserver (envtest) with
// the generated CRDs, so that patches, updates and the API's validation are
// the real ones.

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"github.com/routemode/routemode/api/v1alpha1"
	"github.com/routemode/routemode/internal/ciliumconfig"
)

// kubectl runs routemodectl with the envtest kubeconfig.
func kubectl(t *testing.T, stdin string, args ...string) result {
	t.Helper()
	_, kc := startEnv(t)
	return run(t, noDeps(), stdin, append(args, "--kubeconfig", kc)...)
}

// createRoutingMode creates the RoutingMode default with spec and status
// and deletes it when the test ends.
func createRoutingMode(t *testing.T, spec v1alpha1.RoutingModeSpec, annotations map[string]string, status *v1alpha1.RoutingModeStatus) *v1alpha1.RoutingMode {
	t.Helper()
	e, _ := startEnv(t)
	ctx := context.Background()
	rm := &v1alpha1.RoutingMode{
		ObjectMeta: metav1.ObjectMeta{Name: v1alpha1.RoutingModeName, Annotations: annotations},
		Spec:       spec,
	}
	if err := e.Client.Create(ctx, rm); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := e.Client.Delete(context.Background(), rm); err != nil && !apierrors.IsNotFound(err) {
			t.Error(err)
		}
	})
	if status != nil {
		rm.Status = *status
		rm.Status.ObservedGeneration = rm.Generation
		if err := e.Client.Status().Update(ctx, rm); err != nil {
			t.Fatal(err)
		}
	}
	return rm
}

func getRM(t *testing.T) *v1alpha1.RoutingMode {
	t.Helper()
	e, _ := startEnv(t)
	var rm v1alpha1.RoutingMode
	if err := e.Client.Get(context.Background(), client.ObjectKey{Name: v1alpha1.RoutingModeName}, &rm); err != nil {
		t.Fatal(err)
	}
	return &rm
}

func condNow(t, status, reason, msg string) metav1.Condition {
	return metav1.Condition{Type: t, Status: metav1.ConditionStatus(status), Reason: reason, Message: msg,
		LastTransitionTime: metav1.NewTime(time.Now().Add(-90 * time.Second).Truncate(time.Second))}
}

func TestClusterStatus(t *testing.T) {
	e, _ := startEnv(t)
	ctx := context.Background()
	createRoutingMode(t, v1alpha1.RoutingModeSpec{Tunnel: v1alpha1.TunnelDisabled, NativeRoutingCIDR: "10.0.0.0/16", AutoDirectNodeRoutes: true, HostRouting: v1alpha1.HostRoutingBPF},
		nil, &v1alpha1.RoutingModeStatus{
			Phase:    v1alpha1.PhaseSwitching,
			Nodes:    v1alpha1.NodeCounts{Total: 2, Updated: 1, Healthy: 2},
			Progress: "1/2",
			Datapath: v1alpha1.DatapathSummary{Routing: v1alpha1.ActualRoutingMixed, HostRouting: "Mixed"},
			Conditions: []metav1.Condition{
				condNow(v1alpha1.ConditionReady, "False", "Switching", "Switching: 1/2 nodes send natively"),
				condNow(v1alpha1.ConditionReconciling, "True", "Switching", "Switching: 1/2 nodes send natively"),
				condNow(v1alpha1.ConditionStalled, "False", "Switching", ""),
			},
		})
	for i, name := range []string{"worker-2", "worker-1"} {
		send := []v1alpha1.SendMode{v1alpha1.SendTunnel, v1alpha1.SendNative}[i]
		rn := &v1alpha1.RoutingNode{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: v1alpha1.RoutingNodeSpec{NodeName: name, Step: v1alpha1.StepSwitch, TargetGeneration: 1,
				Datapath: &v1alpha1.NodeDatapath{Tunnel: v1alpha1.TunnelVXLAN, TunnelPort: 8472, SendMode: send, RouteMTU: v1alpha1.RouteMTUTunnel, HostRouting: v1alpha1.HostRoutingBPF}},
		}
		if err := e.Client.Create(ctx, rn); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = e.Client.Delete(context.Background(), rn) })
		rn.Status = v1alpha1.RoutingNodeStatus{
			ObservedGeneration: rn.Generation,
			Datapath:           v1alpha1.NodeDatapathStatus{TunnelDevice: "routemode_vxlan", SendMode: send, RouteMTU: 1450, HostRouting: v1alpha1.HostRoutingBPF},
			Conditions:         []metav1.Condition{condNow(v1alpha1.ConditionDatapathApplied, "True", "Applied", "")},
			PeerSummary:        &v1alpha1.PeerSummary{Total: 1, Probed: 1},
		}
		if err := e.Client.Status().Update(ctx, rn); err != nil {
			t.Fatal(err)
		}
	}

	r := kubectl(t, "", "status")
	if r.code != 0 {
		t.Fatal(r.err)
	}
	mustContain(t, "status", r.out,
		"RoutingMode:  default (generation 1, observed 1)",
		"Requested:    native routing, native routing CIDR 10.0.0.0/16, auto direct node routes, host routing bpf",
		"Routing:      Network: Mixed   Host: Mixed",
		"Rollout:      Switching, 1/2 nodes updated, 2 healthy, 0 failed",
		"Reconciling  True    Switching  ",
		"worker-1  Switch  Native  routemode_vxlan  1450       bpf           True     1/1    -",
		"worker-2  Switch  Tunnel",
	)
	if strings.Index(r.out, "worker-1") > strings.Index(r.out, "worker-2") {
		t.Error("nodes not sorted by name")
	}

	for _, format := range []string{"yaml", "json"} {
		r := kubectl(t, "", "status", "-o", format)
		if r.code != 0 {
			t.Fatal(r.err)
		}
		var rep statusReport
		if err := yaml.UnmarshalStrict([]byte(r.out), &rep); err != nil {
			t.Fatalf("-o %s: %v\n%s", format, err, r.out)
		}
		if rep.RoutingMode.Kind != "RoutingMode" || rep.RoutingMode.Status.Phase != v1alpha1.PhaseSwitching || len(rep.Nodes) != 2 || rep.Nodes[0].Kind != "RoutingNode" {
			t.Errorf("-o %s: %+v", format, rep)
		}
		if strings.Contains(r.out, "managedFields") {
			t.Errorf("-o %s prints managedFields", format)
		}
	}
}

func TestClusterNoRoutingMode(t *testing.T) {
	for _, args := range [][]string{{"status"}, {"rollout", "pause"}, {"rollout", "undo"}, {"export", "cilium-config"}} {
		r := kubectl(t, "", args...)
		if r.code == 0 {
			t.Fatalf("%v: want failure", args)
		}
		mustContain(t, strings.Join(args, " "), r.err,
			"no RoutingMode named default: apply one with kubectl apply -f config/samples/tunnel.yaml")
	}
}

func TestClusterUnknownContext(t *testing.T) {
	r := kubectl(t, "", "status", "--context", "no-such-context")
	if r.code == 0 {
		t.Fatal("want failure")
	}
	mustContain(t, "stderr", r.err, `context "no-such-context"`, "--context")
}

func TestClusterPauseResume(t *testing.T) {
	createRoutingMode(t, v1alpha1.RoutingModeSpec{}, nil, &v1alpha1.RoutingModeStatus{Phase: v1alpha1.PhaseSwitching})
	r := kubectl(t, "", "rollout", "pause")
	if r.code != 0 {
		t.Fatal(r.err)
	}
	mustContain(t, "pause", r.out, "routingmode/default paused: nodes that are switching finish their step")
	rm := getRM(t)
	if !rm.Spec.Rollout.Paused {
		t.Fatal("spec.rollout.paused not set")
	}
	// The patch touched paused only: the server defaults are intact.
	if rm.Spec.Rollout.MaxUnavailable == nil || rm.Spec.Rollout.MaxUnavailable.IntValue() != 1 || rm.Spec.Tunnel != v1alpha1.TunnelVXLAN {
		t.Errorf("other fields changed: %+v", rm.Spec)
	}

	rv := rm.ResourceVersion
	r = kubectl(t, "", "rollout", "pause")
	if r.code != 0 {
		t.Fatal(r.err)
	}
	mustContain(t, "second pause", r.out, "already paused: nothing changed")
	if getRM(t).ResourceVersion != rv {
		t.Error("a second pause wrote the object")
	}

	r = kubectl(t, "", "rollout", "resume")
	if r.code != 0 {
		t.Fatal(r.err)
	}
	mustContain(t, "resume", r.out, "routingmode/default resumed")
	if getRM(t).Spec.Rollout.Paused {
		t.Fatal("still paused")
	}
}

func TestClusterUndo(t *testing.T) {
	prev := v1alpha1.RoutingModeSpec{Tunnel: v1alpha1.TunnelVXLAN, TunnelPort: 8472, HostRouting: v1alpha1.HostRoutingLegacy,
		Rollout: v1alpha1.RolloutSpec{MaxUnavailable: new(intstr.FromInt32(1))}}
	prevJSON, err := json.Marshal(prev)
	if err != nil {
		t.Fatal(err)
	}
	cur := v1alpha1.RoutingModeSpec{Tunnel: v1alpha1.TunnelDisabled, NativeRoutingCIDR: "10.0.0.0/16", AutoDirectNodeRoutes: true,
		HostRouting: v1alpha1.HostRoutingBPF, Rollout: v1alpha1.RolloutSpec{MaxUnavailable: new(intstr.FromString("25%")), Paused: true}}

	t.Run("no annotation", func(t *testing.T) {
		createRoutingMode(t, cur, nil, nil)
		rv := getRM(t).ResourceVersion
		r := kubectl(t, "", "rollout", "undo")
		if r.code == 0 {
			t.Fatal("want failure")
		}
		mustContain(t, "stderr", r.err, "has no previous completed mode to go back to", "no rollout has completed yet")
		if getRM(t).ResourceVersion != rv {
			t.Error("a failed undo wrote the object")
		}
	})

	t.Run("broken annotation", func(t *testing.T) {
		createRoutingMode(t, cur, map[string]string{v1alpha1.AnnotationLastAppliedSpec: `{"tunnel": "vxlan", "tunel": 1}`}, nil)
		r := kubectl(t, "", "rollout", "undo")
		mustContain(t, "stderr", r.err, "is not a RoutingMode spec", `unknown field "tunel"`, "nothing was changed")
	})

	t.Run("annotation the CRD refuses", func(t *testing.T) {
		createRoutingMode(t, cur, map[string]string{v1alpha1.AnnotationLastAppliedSpec: `{"tunnel":"disabled"}`}, nil)
		r := kubectl(t, "", "rollout", "undo")
		mustContain(t, "stderr", r.err, "not valid for this CRD", "nativeRoutingCIDR is required", "nothing was changed")
	})

	t.Run("dry run then undo", func(t *testing.T) {
		createRoutingMode(t, cur, map[string]string{v1alpha1.AnnotationLastAppliedSpec: string(prevJSON)}, nil)
		rv := getRM(t).ResourceVersion
		r := kubectl(t, "", "rollout", "undo", "--dry-run")
		if r.code != 0 {
			t.Fatal(r.err)
		}
		mustContain(t, "dry run", r.out, "would go back from: native routing", "to:   tunnel vxlan (UDP 8472), host routing legacy", "nothing changed")
		if getRM(t).ResourceVersion != rv {
			t.Fatal("--dry-run wrote the object")
		}

		r = kubectl(t, "", "rollout", "undo")
		if r.code != 0 {
			t.Fatal(r.err)
		}
		mustContain(t, "undo", r.out, "rolled back to: tunnel vxlan (UDP 8472), host routing legacy",
			"The rollout is paused: run routemodectl rollout resume")
		got := getRM(t).Spec
		if got.Tunnel != v1alpha1.TunnelVXLAN || got.NativeRoutingCIDR != "" || got.AutoDirectNodeRoutes || got.HostRouting != v1alpha1.HostRoutingLegacy {
			t.Errorf("routing not restored: %+v", got)
		}
		if !got.Rollout.Paused || got.Rollout.MaxUnavailable.String() != "25%" {
			t.Errorf("rollout settings not kept: %+v", got.Rollout)
		}

		r = kubectl(t, "", "rollout", "undo")
		if r.code != 0 {
			t.Fatal(r.err)
		}
		mustContain(t, "second undo", r.out, "already asks for the last completed mode", "nothing to undo")
	})
}

func TestClusterImportExport(t *testing.T) {
	e, _ := startEnv(t)
	ctx := context.Background()
	raw, err := os.ReadFile(filepath.Join(fixtures, "v1.12-native-upgraded.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := ciliumconfig.DecodeConfigMap(raw)
	if err != nil {
		t.Fatal(err)
	}
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "cilium-config", Namespace: "kube-system"}, Data: parsed.Data}
	if err := e.Client.Create(ctx, cm); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.Client.Delete(context.Background(), cm) })

	imp := kubectl(t, "", "import", "cilium-config")
	if imp.code != 0 {
		t.Fatal(imp.err)
	}
	mustContain(t, "import", imp.out, "from ConfigMap kube-system/cilium-config", "tunnel: disabled", "nativeRoutingCIDR: 10.0.0.0/16", "hostRouting: bpf")

	// The printed RoutingMode is accepted by the API server as is.
	var rm v1alpha1.RoutingMode
	if err := yaml.UnmarshalStrict([]byte(imp.out), &rm); err != nil {
		t.Fatal(err)
	}
	if err := e.Client.Create(ctx, &rm); err != nil {
		t.Fatalf("the API server refused the imported RoutingMode: %v", err)
	}
	t.Cleanup(func() { _ = e.Client.Delete(context.Background(), &rm) })

	exp := kubectl(t, "", "export", "cilium-config", "-o", "json")
	if exp.code != 0 {
		t.Fatal(exp.err)
	}
	var patch struct {
		Data map[string]*string `json:"data"`
	}
	if err := json.Unmarshal([]byte(exp.out), &patch); err != nil {
		t.Fatal(err)
	}
	if v := patch.Data["routing-mode"]; v == nil || *v != "native" {
		t.Errorf("routing-mode: %v", v)
	}
	if v, ok := patch.Data["tunnel"]; !ok || v != nil {
		t.Errorf("want tunnel: null to delete the 1.12 key, got %v", v)
	}

	// Applying the patch to the cluster's ConfigMap, as the help says, and
	// importing again gives the same RoutingMode.
	var live corev1.ConfigMap
	if err := e.Client.Get(ctx, client.ObjectKeyFromObject(cm), &live); err != nil {
		t.Fatal(err)
	}
	if err := e.Client.Patch(ctx, &live, client.RawPatch("application/merge-patch+json", []byte(exp.out))); err != nil {
		t.Fatalf("the exported merge patch does not apply: %v", err)
	}
	if _, still := live.Data["tunnel"]; still {
		t.Error("the merge patch did not delete tunnel")
	}
	again := kubectl(t, "", "import", "cilium-config")
	if again.code != 0 || again.out != imp.out {
		t.Errorf("import after export differs:\n%s\n---\n%s\n%s", imp.out, again.out, again.err)
	}

	r := kubectl(t, "", "import", "cilium-config", "-n", "cilium")
	if r.code == 0 {
		t.Fatal("want failure for a namespace without cilium-config")
	}
	mustContain(t, "stderr", r.err, "no ConfigMap cilium/cilium-config", "-n NAMESPACE", "-f FILE")
}
