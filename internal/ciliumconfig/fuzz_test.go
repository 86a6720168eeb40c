package ciliumconfig

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/routemode/routemode/internal/specvalidate"
)

// FuzzImport feeds arbitrary bytes through DecodeConfigMap and Import. It
// must never panic, and whatever Import accepts must be a spec the CRD
// accepts and must survive an export/import round trip unchanged.
func FuzzImport(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join("testdata", "configmaps", "*"))
	for _, name := range files {
		raw, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(raw)
	}
	for _, s := range []string{
		"data: {routing-mode: native, ipv4-native-routing-cidr: 10.0.0.0/16, auto-direct-node-routes: 'true'}",
		"data: {tunnel: disabled, native-routing-cidr: 10.0.0.0/33}",
		"data: {tunnel-port: '-0', tunnel-protocol: geneve, underlay-protocol: ipv6}",
		"data: {kube-proxy-replacement: 'true', enable-bpf-masquerade: 'TRUE', enable-host-legacy-routing: 'f'}",
		`{"data":{"tunnel":"vxlan","routing-mode":"tunnel","tunnel-protocol":"vxlan","ipv4-native-routing-cidr":"0.0.0.0/0"}}`,
		"---\n---\n",
		"data:\n  tunnel: null\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		cm, err := DecodeConfigMap(raw)
		if err != nil {
			return
		}
		res, err := Import(cm.Data)
		if err != nil {
			if err.Error() == "" {
				t.Fatal("empty error message")
			}
			return
		}
		if err := specvalidate.Validate(res.Spec); err != nil {
			t.Fatalf("Import accepted a spec the CRD refuses: %v\n%+v", err, res.Spec)
		}
		for _, legacy := range []bool{false, true} {
			p, err := Export(res.Spec, ExportOptions{LegacyKeys: legacy})
			if err != nil {
				t.Fatalf("Export of an imported spec: %v", err)
			}
			again, err := Import(p.Data())
			if err != nil {
				t.Fatalf("re-import: %v", err)
			}
			if again.Spec != res.Spec {
				t.Fatalf("round trip changed %+v into %+v", res.Spec, again.Spec)
			}
		}
	})
}
