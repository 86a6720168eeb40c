package ciliumconfig

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"

	"github.com/routemode/routemode/api/v1alpha1"
)

func TestExport(t *testing.T) {
	tests := map[string]struct {
		spec   v1alpha1.RoutingModeSpec
		legacy bool
		set    map[string]string
		remove []string
	}{
		"native with eBPF host routing, new keys": {
			spec: spec(v1alpha1.TunnelDisabled, 0, "10.0.0.0/16", true, v1alpha1.HostRoutingBPF),
			set: map[string]string{
				"routing-mode": "native", "ipv4-native-routing-cidr": "10.0.0.0/16", "auto-direct-node-routes": "true",
				"enable-host-legacy-routing": "false", "kube-proxy-replacement": "true", "enable-bpf-masquerade": "true",
			},
			remove: []string{"native-routing-cidr", "tunnel", "tunnel-port", "tunnel-protocol"},
		},
		"defaults: vxlan, legacy": {
			spec: v1alpha1.RoutingModeSpec{},
			set: map[string]string{
				"routing-mode": "tunnel", "tunnel-protocol": "vxlan", "tunnel-port": "8472",
				"auto-direct-node-routes": "false", "enable-host-legacy-routing": "true",
			},
			remove: []string{"ipv4-native-routing-cidr", "native-routing-cidr", "tunnel"},
		},
		"geneve keeps the spec's port, legacy keys": {
			spec:   spec(v1alpha1.TunnelGeneve, 0, "", false, v1alpha1.HostRoutingBPF),
			legacy: true,
			set: map[string]string{
				"tunnel": "geneve", "tunnel-port": "8472", "auto-direct-node-routes": "false",
				"enable-host-legacy-routing": "false", "kube-proxy-replacement": "strict", "enable-bpf-masquerade": "true",
			},
			remove: []string{"ipv4-native-routing-cidr", "native-routing-cidr", "routing-mode", "tunnel-protocol"},
		},
		"native keeps a non-default port for the way back": {
			spec: spec(v1alpha1.TunnelDisabled, 8473, "10.0.0.0/8", false, v1alpha1.HostRoutingLegacy),
			set: map[string]string{
				"routing-mode": "native", "tunnel-port": "8473", "ipv4-native-routing-cidr": "10.0.0.0/8",
				"auto-direct-node-routes": "false", "enable-host-legacy-routing": "true",
			},
			remove: []string{"native-routing-cidr", "tunnel", "tunnel-protocol"},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			p, err := Export(tc.spec, ExportOptions{LegacyKeys: tc.legacy})
			if err != nil {
				t.Fatal(err)
			}
			if len(p.Set) != len(tc.set) {
				t.Errorf("set %v, want %v", p.Set, tc.set)
			}
			for k, v := range tc.set {
				if p.Set[k] != v {
					t.Errorf("set[%s] = %q, want %q", k, p.Set[k], v)
				}
			}
			if !slices.Equal(p.Remove, tc.remove) {
				t.Errorf("remove %v, want %v", p.Remove, tc.remove)
			}
			for _, k := range p.Remove {
				if _, both := p.Set[k]; both {
					t.Errorf("key %s is both set and removed", k)
				}
			}
		})
	}
}

func TestExportRefusesInvalidSpec(t *testing.T) {
	_, err := Export(spec(v1alpha1.TunnelVXLAN, 0, "", true, ""), ExportOptions{})
	if err == nil || !strings.Contains(err.Error(), "autoDirectNodeRoutes requires tunnel: disabled") {
		t.Fatalf("want the CRD's ADNR message, got %v", err)
	}
}

// roundTripSpecs are specs that cover every field value Export writes.
func roundTripSpecs() []v1alpha1.RoutingModeSpec {
	var out []v1alpha1.RoutingModeSpec
	for _, tun := range []v1alpha1.Tunnel{"", v1alpha1.TunnelVXLAN, v1alpha1.TunnelGeneve, v1alpha1.TunnelDisabled} {
		for _, port := range []int32{0, 1, 6081, 8472, 8473, 65535} {
			for _, cidr := range []string{"", "10.0.0.0/16", "0.0.0.0/0", "192.168.1.128/25"} {
				for _, adnr := range []bool{false, true} {
					for _, hr := range []v1alpha1.HostRouting{"", v1alpha1.HostRoutingBPF, v1alpha1.HostRoutingLegacy} {
						s := spec(tun, port, cidr, adnr, hr)
						if tun == v1alpha1.TunnelDisabled && cidr == "" || adnr && tun != v1alpha1.TunnelDisabled {
							continue // invalid, refused by the CRD
						}
						out = append(out, s)
					}
				}
			}
		}
	}
	return out
}

// TestRoundTrip checks import(export(x)) == x for both key styles, through
// the printed YAML merge patch as the CLI writes it.
func TestRoundTrip(t *testing.T) {
	for _, legacy := range []bool{false, true} {
		for _, s := range roundTripSpecs() {
			s.Rollout = v1alpha1.RolloutSpec{MaxUnavailable: new(intstr.FromString("50%"))} // not carried, not lost either
			p, err := Export(s, ExportOptions{LegacyKeys: legacy})
			if err != nil {
				t.Fatalf("Export(%+v): %v", s, err)
			}
			printed, err := yaml.Marshal(p.MergePatch())
			if err != nil {
				t.Fatal(err)
			}
			cm, err := DecodeConfigMap(printed)
			if err != nil {
				t.Fatalf("decoding the printed patch %s: %v", printed, err)
			}
			res, err := Import(cm.Data)
			if err != nil {
				t.Fatalf("Import(Export(%+v)) legacy=%v: %v\n%s", s, legacy, err, printed)
			}
			if want := Normalize(s); res.Spec != want {
				t.Errorf("legacy=%v: Import(Export(x)) = %+v, want %+v\n%s", legacy, res.Spec, want, printed)
			}
			if len(res.Warnings) > 0 {
				t.Errorf("legacy=%v: round trip of %+v warns: %q", legacy, s, res.Warnings)
			}
		}
	}
}

// TestRoundTripFixtures checks export(import(cm)) == cm on the routing keys
// of every fixture that imports: export writes what Cilium ends up running.
func TestRoundTripFixtures(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join("testdata", "configmaps", "*"))
	for _, f := range files {
		raw, _ := os.ReadFile(f)
		cm, err := DecodeConfigMap(raw)
		if err != nil {
			t.Fatal(err)
		}
		first, err := Import(cm.Data)
		if err != nil {
			continue // the refusals are covered by TestImportFixtures
		}
		p, err := Export(first.Spec, ExportOptions{})
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		second, err := Import(p.Data())
		if err != nil || second.Spec != first.Spec {
			t.Errorf("%s: export then import gave %+v, %v; want %+v", f, second.Spec, err, first.Spec)
		}
	}
}
