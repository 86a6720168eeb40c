package config_test

import (
	"context"
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"helm.sh/helm/v4/pkg/action"
	"helm.sh/helm/v4/pkg/chart/common"
	chart "helm.sh/helm/v4/pkg/chart/v2"
	"helm.sh/helm/v4/pkg/chart/v2/lint/support"
	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/routemode/routemode/api/v1alpha1"
	"github.com/routemode/routemode/internal/ciliumconfig"
	"github.com/routemode/routemode/internal/helmchart"
)

// The chart's deliberate differences from config/default, as docs/helm.md
// lists them: Helm's own labels on every object the chart templates; an
// explicit imagePullPolicy (from values; IfNotPresent by default, what the
// API server defaults a tagged image to); CRDs from crds/, which Helm does
// not template, so without config/default's part-of label; no Namespace
// (Helm keeps the release in it: `helm install --create-namespace`); and a
// RoutingMode, which config/default leaves to the user.
var helmLabels = map[string]string{
	"app.kubernetes.io/instance":   helmchart.ReleaseName,
	"app.kubernetes.io/managed-by": "Helm",
	"app.kubernetes.io/version":    "v0.1.0",
	"helm.sh/chart":                "routemode-0.1.0",
}

const partOf = "app.kubernetes.io/part-of"

func loadChart(t *testing.T) *chart.Chart {
	t.Helper()
	ch, err := helmchart.Load(root)
	if err != nil {
		t.Fatal(err)
	}
	return ch
}

// renderChart is `helm template --include-crds` of the chart with values.
func renderChart(t *testing.T, ch *chart.Chart, values map[string]any) []*unstructured.Unstructured {
	t.Helper()
	manifest, err := helmchart.Render(ch, namespace, values)
	if err != nil {
		t.Fatalf("rendering the chart with %v: %v", values, err)
	}
	objs, err := decodeYAML(strings.NewReader(manifest))
	if err != nil {
		t.Fatalf("the rendered chart: %v", err)
	}
	return objs
}

// TestChartMatchesConfigDefault renders the chart with its default values
// and compares every object with `kubectl kustomize config/default`'s,
// whole (kinds, names, RBAC rules, container args, images, ports, probes,
// security contexts, volumes), once the deliberate differences are checked
// and taken out.
func TestChartMatchesConfigDefault(t *testing.T) {
	chartObjs := map[string]*unstructured.Unstructured{}
	var rm *unstructured.Unstructured
	for _, u := range renderChart(t, loadChart(t), nil) {
		if u.GetKind() == "RoutingMode" {
			rm = u
			continue
		}
		labels := u.GetLabels()
		if u.GetKind() == "CustomResourceDefinition" {
			if len(labels) != 0 {
				t.Errorf("%s: crds/ is copied from config/crd/bases, which has no labels, but it has %v", id(u), labels)
			}
		} else {
			for k, want := range helmLabels {
				if got, ok := labels[k]; !ok || got != want {
					t.Errorf("%s: label %s is %q, want %q", id(u), k, got, want)
				}
				delete(labels, k)
			}
			u.SetLabels(labels)
		}
		for _, path := range [][]string{{"spec", "template", "spec", "containers"}, {"spec", "template", "spec", "initContainers"}} {
			cs, _, _ := unstructured.NestedSlice(u.Object, path...)
			for _, c := range cs {
				c := c.(map[string]any)
				if c["imagePullPolicy"] != "IfNotPresent" {
					t.Errorf("%s: container %v has imagePullPolicy %v, want IfNotPresent", id(u), c["name"], c["imagePullPolicy"])
				}
				delete(c, "imagePullPolicy")
			}
			if len(cs) > 0 {
				if err := unstructured.SetNestedSlice(u.Object, cs, path...); err != nil {
					t.Fatal(err)
				}
			}
		}
		chartObjs[id(u)] = u
	}

	kustObjs := map[string]*unstructured.Unstructured{}
	for _, u := range kustomize(t, "config/default") {
		switch u.GetKind() {
		case "Namespace":
			continue
		case "CustomResourceDefinition":
			unstructured.RemoveNestedField(u.Object, "metadata", "labels", partOf)
			if len(u.GetLabels()) == 0 {
				unstructured.RemoveNestedField(u.Object, "metadata", "labels")
			}
		}
		kustObjs[id(u)] = u
	}

	if got, want := slices.Sorted(maps.Keys(chartObjs)), slices.Sorted(maps.Keys(kustObjs)); !slices.Equal(got, want) {
		t.Fatalf("the chart renders\n  %s\nconfig/default builds (without its Namespace)\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
	for key, want := range kustObjs {
		if d := cmp.Diff(want.Object, chartObjs[key].Object); d != "" {
			t.Errorf("%s differs between config/default (-) and the chart (+):\n%s", key, d)
		}
	}

	// The default RoutingMode is config/samples/tunnel.yaml's.
	if rm == nil {
		t.Fatal("the chart renders no RoutingMode")
	}
	sample := decodeFile(t, "../config/samples/tunnel.yaml")[0]
	if d := cmp.Diff(sample.Object["spec"], rm.Object["spec"]); d != "" {
		t.Errorf("the default values' RoutingMode differs from config/samples/tunnel.yaml (-sample +chart):\n%s", d)
	}
	if rm.GetName() != "default" || rm.GetLabels()[partOf] != "routemode" {
		t.Errorf("RoutingMode %q labels %v", rm.GetName(), rm.GetLabels())
	}
}

// routingModeSpec renders values and returns the RoutingMode's spec.
func routingModeSpec(t *testing.T, ch *chart.Chart, values map[string]any) v1alpha1.RoutingModeSpec {
	t.Helper()
	for _, u := range renderChart(t, ch, values) {
		if u.GetKind() == "RoutingMode" {
			var rm v1alpha1.RoutingMode
			if err := runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(u.Object, &rm, true); err != nil {
				t.Fatalf("the rendered RoutingMode: %v", err)
			}
			return rm.Spec
		}
	}
	t.Fatal("the chart renders no RoutingMode")
	return v1alpha1.RoutingModeSpec{}
}

// ciliumConfig is the cilium-config Cilium's own chart writes for the
// routing values (cilium/cilium install/kubernetes/cilium/templates/
// cilium-configmap.yaml): empty routingMode and tunnelProtocol mean tunnel
// and vxlan, tunnelPort 0 is left to the protocol, and the booleans are
// written as strings. bpf.hostLegacyRouting: false also gets what Cilium
// needs to really run eBPF host routing (kube-proxy replacement and BPF
// masquerading; routemode needs neither), or Cilium would fall back to
// legacy and Import, rightly, with it.
func ciliumConfig(ch *chart.Chart, values map[string]any) map[string]string {
	v := maps.Clone(ch.Values)
	maps.Copy(v, values)
	str := func(key, def string) string {
		if s, _ := v[key].(string); s != "" {
			return s
		}
		return def
	}
	data := map[string]string{
		ciliumconfig.KeyRoutingMode:          str("routingMode", "tunnel"),
		ciliumconfig.KeyTunnelProtocol:       str("tunnelProtocol", "vxlan"),
		ciliumconfig.KeyAutoDirectNodeRoutes: strconv.FormatBool(v["autoDirectNodeRoutes"] == true),
	}
	if port := fmt.Sprint(v["tunnelPort"]); port != "0" {
		data[ciliumconfig.KeyTunnelPort] = port
	}
	if cidr := str("ipv4NativeRoutingCIDR", ""); cidr != "" {
		data[ciliumconfig.KeyIPv4NativeRoutingCIDR] = cidr
	}
	legacy := v["bpf"].(map[string]any)["hostLegacyRouting"] == true
	data[ciliumconfig.KeyHostLegacyRouting] = strconv.FormatBool(legacy)
	if !legacy {
		data[ciliumconfig.KeyKubeProxyReplacement] = "true"
		data[ciliumconfig.KeyBPFMasquerade] = "true"
	}
	return data
}

// TestChartValuesMapLikeCilium renders the RoutingMode for Cilium-named
// values and checks its spec against the one written here, and against
// what `routemodectl import cilium-config` makes of the cilium-config
// Cilium's chart writes for the same values.
func TestChartValuesMapLikeCilium(t *testing.T) {
	ch := loadChart(t)
	const cidr = "10.0.0.0/16"
	for _, tc := range []struct {
		name   string
		values map[string]any
		want   v1alpha1.RoutingModeSpec
	}{
		{"defaults", nil,
			v1alpha1.RoutingModeSpec{Tunnel: v1alpha1.TunnelVXLAN, TunnelPort: 8472, HostRouting: v1alpha1.HostRoutingLegacy}},
		{"Cilium's empty defaults", map[string]any{"routingMode": "", "tunnelProtocol": ""},
			v1alpha1.RoutingModeSpec{Tunnel: v1alpha1.TunnelVXLAN, TunnelPort: 8472, HostRouting: v1alpha1.HostRoutingLegacy}},
		{"native, direct routes, eBPF host routing",
			map[string]any{"routingMode": "native", "autoDirectNodeRoutes": true, "ipv4NativeRoutingCIDR": cidr, "bpf": map[string]any{"hostLegacyRouting": false}},
			v1alpha1.RoutingModeSpec{Tunnel: v1alpha1.TunnelDisabled, TunnelPort: 8472, NativeRoutingCIDR: cidr, AutoDirectNodeRoutes: true, HostRouting: v1alpha1.HostRoutingBPF}},
		{"native, legacy host routing", map[string]any{"routingMode": "native", "ipv4NativeRoutingCIDR": cidr},
			v1alpha1.RoutingModeSpec{Tunnel: v1alpha1.TunnelDisabled, TunnelPort: 8472, NativeRoutingCIDR: cidr, HostRouting: v1alpha1.HostRoutingLegacy}},
		{"native ignores tunnelProtocol", map[string]any{"routingMode": "native", "tunnelProtocol": "geneve", "ipv4NativeRoutingCIDR": cidr},
			v1alpha1.RoutingModeSpec{Tunnel: v1alpha1.TunnelDisabled, TunnelPort: 8472, NativeRoutingCIDR: cidr, HostRouting: v1alpha1.HostRoutingLegacy}},
		{"geneve takes its own port", map[string]any{"tunnelProtocol": "geneve"},
			v1alpha1.RoutingModeSpec{Tunnel: v1alpha1.TunnelGeneve, TunnelPort: 6081, HostRouting: v1alpha1.HostRoutingLegacy}},
		{"vxlan on another port, eBPF host routing", map[string]any{"tunnelPort": 4789, "bpf": map[string]any{"hostLegacyRouting": false}},
			v1alpha1.RoutingModeSpec{Tunnel: v1alpha1.TunnelVXLAN, TunnelPort: 4789, HostRouting: v1alpha1.HostRoutingBPF}},
		{"tunnel keeps a native routing CIDR", map[string]any{"ipv4NativeRoutingCIDR": cidr},
			v1alpha1.RoutingModeSpec{Tunnel: v1alpha1.TunnelVXLAN, TunnelPort: 8472, NativeRoutingCIDR: cidr, HostRouting: v1alpha1.HostRoutingLegacy}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := routingModeSpec(t, ch, tc.values)
			if d := cmp.Diff(tc.want, got); d != "" {
				t.Errorf("values %v render (-want +got):\n%s", tc.values, d)
			}
			data := ciliumConfig(ch, tc.values)
			imported, err := ciliumconfig.Import(data)
			if err != nil {
				t.Fatalf("importing %v: %v", data, err)
			}
			if d := cmp.Diff(imported.Spec, got); d != "" {
				t.Errorf("cilium-config %v imports to another spec than the chart renders (-import +chart):\n%s", data, d)
			}
		})
	}

	// Rollout settings pass through to spec.rollout.
	got := routingModeSpec(t, ch, map[string]any{"rollout": map[string]any{"maxUnavailable": "10%", "healthCheckTimeout": "90s", "autoRollback": false}})
	if mu := got.Rollout.MaxUnavailable; mu == nil || *mu != intstr.FromString("10%") ||
		got.Rollout.HealthCheckTimeout == nil || got.Rollout.HealthCheckTimeout.Duration.String() != "1m30s" ||
		got.Rollout.AutoRollback == nil || *got.Rollout.AutoRollback {
		t.Errorf("rollout values render as %+v", got.Rollout)
	}
}

// badValues are values the chart refuses when it renders, each with what
// the error must say: the value, and what to write instead.
var badValues = []struct {
	name   string
	values map[string]any
	want   []string
}{
	{"unknown routing mode", map[string]any{"routingMode": "hybrid"}, []string{"routingMode", "tunnel", "native"}},
	{"native without a CIDR", map[string]any{"routingMode": "native"}, []string{"needs ipv4NativeRoutingCIDR", "--set ipv4NativeRoutingCIDR=10.0.0.0/16"}},
	{"direct routes while tunnelling", map[string]any{"autoDirectNodeRoutes": true}, []string{"autoDirectNodeRoutes: true needs routingMode: native", "autoDirectNodeRoutes=false"}},
	{"CIDR without a prefix length", map[string]any{"routingMode": "native", "ipv4NativeRoutingCIDR": "10.0.0.0"}, []string{"ipv4NativeRoutingCIDR", "does not match pattern"}},
	{"IPv6 CIDR", map[string]any{"routingMode": "native", "ipv4NativeRoutingCIDR": "fd00::/64"}, []string{"ipv4NativeRoutingCIDR"}},
	{"port out of range", map[string]any{"tunnelPort": 70000}, []string{"tunnelPort", "maximum"}},
	{"a string for a boolean", map[string]any{"bpf": map[string]any{"hostLegacyRouting": "false"}}, []string{"hostLegacyRouting", "boolean"}},
	{"misspelt value", map[string]any{"routingmode": "native"}, []string{"routingmode"}},
	{"unknown tunnel protocol", map[string]any{"tunnelProtocol": "gre"}, []string{"tunnelProtocol", "vxlan"}},
	{"zero maxUnavailable", map[string]any{"rollout": map[string]any{"maxUnavailable": "0%"}}, []string{"maxUnavailable"}},
	{"duration without a unit", map[string]any{"rollout": map[string]any{"healthCheckTimeout": "120"}}, []string{"healthCheckTimeout"}},
	{"unknown pull policy", map[string]any{"image": map[string]any{"pullPolicy": "Sometimes"}}, []string{"pullPolicy", "IfNotPresent"}},
	{"no operator", map[string]any{"operator": map[string]any{"replicas": 0}}, []string{"replicas", "minimum"}},
}

// TestChartRefusesBadValues renders every bad value and checks that the
// chart refuses it with an error naming the value and the way out.
func TestChartRefusesBadValues(t *testing.T) {
	ch := loadChart(t)
	for _, tc := range badValues {
		t.Run(tc.name, func(t *testing.T) {
			manifest, err := helmchart.Render(ch, namespace, tc.values)
			if err == nil {
				t.Fatalf("values %v rendered:\n%s", tc.values, manifest)
			}
			t.Log(err)
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("the error for %v does not say %q: %v", tc.values, w, err)
				}
			}
		})
	}
}

// TestHelmInstall installs the chart with Helm's SDK, as `helm install
// --create-namespace` and `helm upgrade` do, on an API server with nothing
// installed: bad values change nothing; the CRDs from crds/ and every
// templated object are created and accepted (the RoutingMode by the CRD's
// schema and CEL rules); an upgrade to native routing is accepted, one the
// CRD's CEL refuses fails with its message and leaves the RoutingMode as
// it was; uninstalling removes everything but the CRDs.
func TestHelmInstall(t *testing.T) {
	c, err := startPristine("helm")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	ch := loadChart(t)
	h, err := helmchart.Connect(c.kubeconfig, namespace)
	if err != nil {
		t.Fatal(err)
	}

	for _, bad := range badValues {
		if _, err := h.Install(ctx, ch, bad.values, 0); err == nil {
			t.Fatalf("helm install with %v succeeded", bad.values)
		}
	}
	crds := &apiextensionsv1.CustomResourceDefinitionList{}
	if err := c.client.List(ctx, crds); err != nil {
		t.Fatal(err)
	}
	if len(crds.Items) != 0 {
		t.Errorf("refused installs left %d CRDs", len(crds.Items))
	}
	if err := c.client.Get(ctx, client.ObjectKey{Name: namespace}, &corev1.Namespace{}); !apierrors.IsNotFound(err) {
		t.Errorf("refused installs left namespace %s (get: %v)", namespace, err)
	}

	rel, err := h.Install(ctx, ch, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	objs, err := decodeYAML(strings.NewReader(rel.Manifest))
	if err != nil {
		t.Fatal(err)
	}
	if len(objs) == 0 {
		t.Fatal("the release has no objects")
	}
	for _, u := range objs {
		if err := c.client.Get(ctx, client.ObjectKeyFromObject(u), u.DeepCopy()); err != nil {
			t.Errorf("%s: %v", id(u), err)
		}
	}
	for _, name := range []string{"routingmodes.routemode.io", "routingnodes.routemode.io"} {
		crd := &apiextensionsv1.CustomResourceDefinition{}
		if err := c.client.Get(ctx, client.ObjectKey{Name: name}, crd); err != nil {
			t.Errorf("CRD %s from crds/: %v", name, err)
		}
	}
	rm := &v1alpha1.RoutingMode{}
	if err := c.client.Get(ctx, client.ObjectKey{Name: "default"}, rm); err != nil {
		t.Fatal(err)
	}
	if rm.Spec.Tunnel != v1alpha1.TunnelVXLAN || rm.Spec.HostRouting != v1alpha1.HostRoutingLegacy || rm.Spec.Rollout.MaxUnavailable == nil {
		t.Errorf("installed RoutingMode spec %+v, want vxlan, legacy, and the CRD's rollout defaults", rm.Spec)
	}

	native := map[string]any{"routingMode": "native", "autoDirectNodeRoutes": true, "ipv4NativeRoutingCIDR": "10.0.0.0/16",
		"bpf": map[string]any{"hostLegacyRouting": false}}
	if _, err := h.Upgrade(ctx, ch, native, 0); err != nil {
		t.Fatal(err)
	}
	if err := c.client.Get(ctx, client.ObjectKey{Name: "default"}, rm); err != nil {
		t.Fatal(err)
	}
	if rm.Spec.Tunnel != v1alpha1.TunnelDisabled || rm.Spec.NativeRoutingCIDR != "10.0.0.0/16" || !rm.Spec.AutoDirectNodeRoutes || rm.Spec.HostRouting != v1alpha1.HostRoutingBPF {
		t.Errorf("upgraded RoutingMode spec %+v, want native routing with direct routes and eBPF host routing", rm.Spec)
	}

	// Host bits pass the values schema, which checks the form only; the
	// CRD's CEL rule refuses them.
	hostBits := maps.Clone(native)
	hostBits["ipv4NativeRoutingCIDR"] = "10.0.0.1/16"
	_, err = h.Upgrade(ctx, ch, hostBits, 0)
	if err == nil || !strings.Contains(err.Error(), "nativeRoutingCIDR has host bits set") {
		t.Errorf("upgrade to a CIDR with host bits: %v, want the CRD's refusal", err)
	}
	generation := rm.Generation
	if err := c.client.Get(ctx, client.ObjectKey{Name: "default"}, rm); err != nil {
		t.Fatal(err)
	}
	if rm.Spec.NativeRoutingCIDR != "10.0.0.0/16" || rm.Generation != generation {
		t.Errorf("the refused upgrade changed the RoutingMode: %s at generation %d", rm.Spec.NativeRoutingCIDR, rm.Generation)
	}

	if err := h.Uninstall(0); err != nil {
		t.Fatal(err)
	}
	for _, u := range objs {
		eventually(t, 30*time.Second, id(u)+" deleted", func(ctx context.Context) error {
			err := c.client.Get(ctx, client.ObjectKeyFromObject(u), u.DeepCopy())
			if apierrors.IsNotFound(err) {
				return nil
			}
			return fmt.Errorf("still there (get: %v)", err)
		})
	}
	if err := c.client.List(ctx, crds); err != nil {
		t.Fatal(err)
	}
	if len(crds.Items) != 2 {
		t.Errorf("after helm uninstall %d CRDs are left, want routemode's 2 (Helm keeps what crds/ installed)", len(crds.Items))
	}
}

// TestChartLints runs `helm lint --strict` on the chart with its default
// values and with native routing: Helm's checks of Chart.yaml, the values
// schema and the rendered YAML, warnings counted as failures.
func TestChartLints(t *testing.T) {
	kv, err := common.ParseKubeVersion(helmchart.KubeVersion)
	if err != nil {
		t.Fatal(err)
	}
	for _, values := range []map[string]any{nil, {"routingMode": "native", "ipv4NativeRoutingCIDR": "10.0.0.0/16"}} {
		lint := action.NewLint()
		lint.Strict, lint.Namespace, lint.KubeVersion = true, namespace, kv
		res := lint.Run([]string{filepath.Join(root, "charts", "routemode")}, values)
		if res.TotalChartsLinted != 1 {
			t.Errorf("helm lint linted %d charts, want 1", res.TotalChartsLinted)
		}
		for _, m := range res.Messages {
			if m.Severity >= support.WarningSev {
				t.Errorf("helm lint with %v: %v", values, m)
			} else {
				t.Logf("helm lint with %v: %v", values, m)
			}
		}
		for _, err := range res.Errors {
			t.Errorf("helm lint with %v: %v", values, err)
		}
	}
}
