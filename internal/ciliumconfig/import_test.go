package ciliumconfig

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/routemode/routemode/api/v1alpha1"
)

func readFixture(t *testing.T, name string) ConfigMap {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("testdata", "configmaps", name))
	if err != nil {
		t.Fatal(err)
	}
	cm, err := DecodeConfigMap(raw)
	if err != nil {
		t.Fatalf("decoding %s: %v", name, err)
	}
	return cm
}

func spec(tunnel v1alpha1.Tunnel, port int32, cidr string, adnr bool, hr v1alpha1.HostRouting) v1alpha1.RoutingModeSpec {
	return v1alpha1.RoutingModeSpec{Tunnel: tunnel, TunnelPort: port, NativeRoutingCIDR: cidr, AutoDirectNodeRoutes: adnr, HostRouting: hr}
}

// TestImportFixtures runs Import over ConfigMaps shaped like those of
// several Cilium releases.
func TestImportFixtures(t *testing.T) {
	const (
		bpf    = v1alpha1.HostRoutingBPF
		legacy = v1alpha1.HostRoutingLegacy
	)
	tests := map[string]struct {
		file string
		want v1alpha1.RoutingModeSpec
		// warnings: each string must appear in some warning; nil means
		// no warning at all.
		warnings []string
		// errKeys: the import must fail and name each of these keys.
		errKeys []string
		errText []string
	}{
		"1.10 vxlan, kube-proxy replacement probe falls back to legacy": {
			file:     "v1.10-vxlan.yaml",
			want:     spec(v1alpha1.TunnelVXLAN, 8472, "", false, legacy),
			warnings: []string{"kube-proxy-replacement is probe", "hostRouting: legacy"},
		},
		"1.11 GKE native with native-routing-cidr": {
			file: "v1.11-native-gke.yaml",
			want: spec(v1alpha1.TunnelDisabled, 8472, "10.48.0.0/14", false, legacy),
			warnings: []string{"kube-proxy-replacement is partial", "masquerading uses iptables",
				"enable-endpoint-routes is true"},
		},
		"1.12 upgraded, both CIDR keys agree, eBPF host routing active": {
			file: "v1.12-native-upgraded.yaml",
			want: spec(v1alpha1.TunnelDisabled, 8472, "10.0.0.0/16", true, bpf),
		},
		"1.14 native with an unused tunnel-protocol, no kube-proxy replacement": {
			file:     "v1.14-native.yaml",
			want:     spec(v1alpha1.TunnelDisabled, 8472, "10.0.0.0/8", true, legacy),
			warnings: []string{"tunnel-protocol=vxlan is ignored", "kube-proxy-replacement is false"},
		},
		"1.15 geneve on Cilium's default port 6081": {
			file: "v1.15-geneve.yaml",
			want: spec(v1alpha1.TunnelGeneve, 6081, "", false, bpf),
		},
		"1.16 native, kube-proxy replacement and eBPF masquerading": {
			file:     "v1.16-native-kpr-bpf.yaml",
			want:     spec(v1alpha1.TunnelDisabled, 8472, "10.244.0.0/16", true, bpf),
			warnings: []string{"tunnel-protocol=vxlan is ignored"},
		},
		"1.16 helm template output, cilium-config picked among documents": {
			file:     "v1.16-helm-template.yaml",
			want:     spec(v1alpha1.TunnelDisabled, 8472, "10.96.0.0/12", true, legacy),
			warnings: []string{"kube-proxy-replacement is false", "masquerading uses iptables"},
		},
		"1.17 vxlan on port 8473 with a CIDR in tunnel mode": {
			file: "v1.17-vxlan-port.yaml",
			want: spec(v1alpha1.TunnelVXLAN, 8473, "10.42.0.0/16", false, bpf),
		},
		"1.18 legacy host routing chosen explicitly": {
			file: "v1.18-legacy-routing.yaml",
			want: spec(v1alpha1.TunnelDisabled, 8472, "172.16.0.0/12", false, legacy),
		},
		"1.19 kubectl get -o json": {
			file: "v1.19-get-json.json",
			want: spec(v1alpha1.TunnelVXLAN, 8472, "", false, bpf),
		},
		"1.20 hybrid is refused": {
			file:    "v1.20-hybrid.yaml",
			errKeys: []string{"routing-mode=hybrid"},
			errText: []string{"hybrid routing", "cannot be expressed"},
		},
		"stale tunnel key contradicting routing-mode": {
			file:    "v1.14-stale-tunnel.yaml",
			errKeys: []string{"tunnel=vxlan", "routing-mode=native"},
			errText: []string{"conflicting keys", "remove the old key tunnel"},
		},
		"dual stack is refused for both IPv6 keys": {
			file:    "v1.16-dual-stack.yaml",
			errKeys: []string{"enable-ipv6=true", "ipv6-native-routing-cidr=fd00:10::/104"},
			errText: []string{"2 problems", "IPv4 pods only"},
		},
		"direct-routing-skip-unreachable is refused": {
			file:    "v1.16-skip-unreachable.yaml",
			errKeys: []string{"direct-routing-skip-unreachable=true"},
		},
		"geneve over an IPv6 underlay is refused": {
			file:    "v1.18-geneve-ipv6-underlay.yaml",
			errKeys: []string{"underlay-protocol=ipv6", "routing-mode=tunnel", "tunnel-protocol=geneve"},
			errText: []string{"IPv6 underlay"},
		},
		"native routing without a CIDR": {
			file:    "v1.15-native-no-cidr.yaml",
			errKeys: []string{"routing-mode=native"},
			errText: []string{"add ipv4-native-routing-cidr"},
		},
		"CIDR with host bits": {
			file:    "v1.13-host-bits.yaml",
			errKeys: []string{"ipv4-native-routing-cidr=10.0.0.1/16"},
			errText: []string{"host bits", "10.0.0.0/16"},
		},
		"auto-direct-node-routes while tunnelling": {
			file:    "v1.13-adnr-with-tunnel.yaml",
			errKeys: []string{"auto-direct-node-routes=true", "tunnel=vxlan"},
			errText: []string{"set auto-direct-node-routes: false"},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			res, err := Import(readFixture(t, tc.file).Data)
			if tc.errKeys != nil {
				checkImportError(t, err, tc.errKeys, tc.errText)
				return
			}
			if err != nil {
				t.Fatalf("Import: %v", err)
			}
			if res.Spec != tc.want {
				t.Errorf("spec:\n got %+v\nwant %+v", res.Spec, tc.want)
			}
			checkWarnings(t, res.Warnings, tc.warnings)
		})
	}
}

func checkImportError(t *testing.T, err error, keys, texts []string) {
	t.Helper()
	var ie *ImportError
	if !errors.As(err, &ie) {
		t.Fatalf("want an *ImportError, got %v", err)
	}
	for _, k := range keys {
		if !ie.HasKey(k) {
			t.Errorf("error does not name %s: %v", k, err)
		}
		if !strings.Contains(err.Error(), k) {
			t.Errorf("error text does not mention %s: %v", k, err)
		}
	}
	for _, s := range texts {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error text lacks %q: %v", s, err)
		}
	}
	for _, p := range ie.Problems {
		if p.What == "" || p.Fix == "" {
			t.Errorf("problem without what or fix: %+v", p)
		}
	}
}

func checkWarnings(t *testing.T, got, want []string) {
	t.Helper()
	if want == nil && len(got) > 0 {
		t.Errorf("unexpected warnings: %q", got)
	}
	all := strings.Join(got, "\n")
	for _, w := range want {
		if !strings.Contains(all, w) {
			t.Errorf("no warning mentions %q; warnings: %q", w, got)
		}
	}
}

// TestImportKeys covers single-key rules with small inline maps.
func TestImportKeys(t *testing.T) {
	const legacy = v1alpha1.HostRoutingLegacy
	kprOn := map[string]string{"kube-proxy-replacement": "true", "enable-bpf-masquerade": "true"}
	with := func(base map[string]string, kv ...string) map[string]string {
		m := map[string]string{}
		for k, v := range base {
			m[k] = v
		}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	tests := map[string]struct {
		data     map[string]string
		want     v1alpha1.RoutingModeSpec
		warnings []string
		errKeys  []string
	}{
		"empty ConfigMap means Cilium's defaults": {
			data:     map[string]string{},
			want:     spec(v1alpha1.TunnelVXLAN, 8472, "", false, legacy),
			warnings: []string{"kube-proxy-replacement is unset"},
		},
		"empty values count as unset": {
			data: with(kprOn, "tunnel", "", "routing-mode", " ", "tunnel-port", ""),
			want: spec(v1alpha1.TunnelVXLAN, 8472, "", false, v1alpha1.HostRoutingBPF),
		},
		"tunnel-port 0 means the protocol default": {
			data: with(kprOn, "tunnel-protocol", "geneve", "tunnel-port", "0"),
			want: spec(v1alpha1.TunnelGeneve, 6081, "", false, v1alpha1.HostRoutingBPF),
		},
		"old tunnel geneve alone": {
			data: with(kprOn, "tunnel", "geneve"),
			want: spec(v1alpha1.TunnelGeneve, 6081, "", false, v1alpha1.HostRoutingBPF),
		},
		"old and new keys that agree": {
			data: with(kprOn, "tunnel", "geneve", "routing-mode", "tunnel", "tunnel-protocol", "geneve", "tunnel-port", "6082"),
			want: spec(v1alpha1.TunnelGeneve, 6082, "", false, v1alpha1.HostRoutingBPF),
		},
		"tunnel disabled with routing-mode native": {
			data: with(kprOn, "tunnel", "disabled", "routing-mode", "native", "ipv4-native-routing-cidr", "10.0.0.0/16"),
			want: spec(v1alpha1.TunnelDisabled, 8472, "10.0.0.0/16", false, v1alpha1.HostRoutingBPF),
		},
		"iptables masquerading off entirely keeps BPF host routing": {
			data: map[string]string{"kube-proxy-replacement": "true", "enable-ipv4-masquerade": "false"},
			want: spec(v1alpha1.TunnelVXLAN, 8472, "", false, v1alpha1.HostRoutingBPF),
		},
		"IPsec before 1.19 falls back": {
			data:     with(kprOn, "enable-ipsec", "true"),
			want:     spec(v1alpha1.TunnelVXLAN, 8472, "", false, legacy),
			warnings: []string{"enable-ipsec is true"},
		},
		"mtu is reported, not imported": {
			data:     with(kprOn, "mtu", "9000"),
			want:     spec(v1alpha1.TunnelVXLAN, 8472, "", false, v1alpha1.HostRoutingBPF),
			warnings: []string{"mtu=9000 is not imported"},
		},
		"ipv6 underlay in native routing is ignored with a warning": {
			data:     with(kprOn, "routing-mode", "native", "ipv4-native-routing-cidr", "10.0.0.0/8", "underlay-protocol", "ipv6"),
			want:     spec(v1alpha1.TunnelDisabled, 8472, "10.0.0.0/8", false, v1alpha1.HostRoutingBPF),
			warnings: []string{"underlay-protocol=ipv6 is ignored"},
		},
		"tunnel vs tunnel-protocol":      {data: map[string]string{"tunnel": "vxlan", "tunnel-protocol": "geneve"}, errKeys: []string{"tunnel=vxlan", "tunnel-protocol=geneve"}},
		"tunnel disabled vs tunnel mode": {data: map[string]string{"tunnel": "disabled", "routing-mode": "tunnel"}, errKeys: []string{"tunnel=disabled", "routing-mode=tunnel"}},
		"1.14 tunnel geneve without tunnel-protocol is version dependent": {
			data: map[string]string{"tunnel": "geneve", "routing-mode": "tunnel"}, errKeys: []string{"tunnel=geneve", "routing-mode=tunnel"},
		},
		"CIDR keys that differ": {
			data:    map[string]string{"routing-mode": "native", "native-routing-cidr": "10.0.0.0/16", "ipv4-native-routing-cidr": "10.0.0.0/8"},
			errKeys: []string{"native-routing-cidr=10.0.0.0/16", "ipv4-native-routing-cidr=10.0.0.0/8"},
		},
		"IPv6 in the IPv4 key":        {data: map[string]string{"routing-mode": "native", "ipv4-native-routing-cidr": "fd00::/64"}, errKeys: []string{"ipv4-native-routing-cidr=fd00::/64"}},
		"CIDR without prefix length":  {data: map[string]string{"routing-mode": "native", "native-routing-cidr": "10.0.0.0"}, errKeys: []string{"native-routing-cidr=10.0.0.0"}},
		"unknown routing-mode":        {data: map[string]string{"routing-mode": "direct"}, errKeys: []string{"routing-mode=direct"}},
		"unknown tunnel":              {data: map[string]string{"tunnel": "ipip"}, errKeys: []string{"tunnel=ipip"}},
		"tunnel-protocol disabled":    {data: map[string]string{"tunnel-protocol": "disabled"}, errKeys: []string{"tunnel-protocol=disabled"}},
		"tunnel-port out of range":    {data: map[string]string{"tunnel-port": "70000"}, errKeys: []string{"tunnel-port=70000"}},
		"tunnel-port not a number":    {data: map[string]string{"tunnel-port": "vxlan"}, errKeys: []string{"tunnel-port=vxlan"}},
		"boolean that is not one":     {data: map[string]string{"auto-direct-node-routes": "yes"}, errKeys: []string{"auto-direct-node-routes=yes"}},
		"IPv6-only":                   {data: map[string]string{"enable-ipv4": "false", "enable-ipv6": "true"}, errKeys: []string{"enable-ipv4=false", "enable-ipv6=true"}},
		"source port range":           {data: map[string]string{"tunnel-source-port-range": "1000-2000"}, errKeys: []string{"tunnel-source-port-range=1000-2000"}},
		"unknown underlay":            {data: map[string]string{"underlay-protocol": "ipx"}, errKeys: []string{"underlay-protocol=ipx"}},
		"several problems are listed": {data: map[string]string{"routing-mode": "hybrid", "tunnel-port": "-1", "enable-ipv6": "true"}, errKeys: []string{"routing-mode=hybrid", "tunnel-port=-1", "enable-ipv6=true"}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			res, err := Import(tc.data)
			if tc.errKeys != nil {
				checkImportError(t, err, tc.errKeys, nil)
				return
			}
			if err != nil {
				t.Fatalf("Import: %v", err)
			}
			if res.Spec != tc.want {
				t.Errorf("spec:\n got %+v\nwant %+v", res.Spec, tc.want)
			}
			checkWarnings(t, res.Warnings, tc.warnings)
		})
	}
}

func TestDecodeConfigMap(t *testing.T) {
	tests := map[string]struct {
		in      string
		want    map[string]string
		errText string
	}{
		"merge patch with nulls": {
			in:   "data:\n  routing-mode: native\n  tunnel: null\n",
			want: map[string]string{"routing-mode": "native"},
		},
		"json":              {in: `{"kind":"ConfigMap","metadata":{"name":"cilium-config"},"data":{"tunnel":"vxlan"}}`, want: map[string]string{"tunnel": "vxlan"}},
		"empty input":       {in: "  \n", errText: "the input is empty"},
		"no data":           {in: "kind: ConfigMap\nmetadata:\n  name: cilium-config\n", errText: "has no data"},
		"number value":      {in: "data:\n  tunnel-port: 8472\n", errText: `quote the value (tunnel-port: "8472")`},
		"not a ConfigMap":   {in: "kind: Deployment\nmetadata:\n  name: x\n", errText: "no ConfigMap (kinds found: Deployment)"},
		"two other maps":    {in: "kind: ConfigMap\nmetadata: {name: a}\ndata: {}\n---\nkind: ConfigMap\nmetadata: {name: b}\ndata: {}\n", errText: "none is named cilium-config (found a, b)"},
		"broken yaml":       {in: "data: [\n", errText: "not valid YAML or JSON"},
		"data is a list":    {in: "data:\n- a\n", errText: "not a map"},
		"only separators":   {in: "---\n---\n", errText: "no document"},
		"one other map too": {in: "kind: ConfigMap\nmetadata: {name: other}\ndata: {tunnel: vxlan}\n", want: map[string]string{"tunnel": "vxlan"}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			cm, err := DecodeConfigMap([]byte(tc.in))
			if tc.errText != "" {
				if err == nil || !strings.Contains(err.Error(), tc.errText) {
					t.Fatalf("want error containing %q, got %v", tc.errText, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(cm.Data) != len(tc.want) {
				t.Fatalf("data %v, want %v", cm.Data, tc.want)
			}
			for k, v := range tc.want {
				if cm.Data[k] != v {
					t.Errorf("data[%s] = %q, want %q", k, cm.Data[k], v)
				}
			}
		})
	}
}
