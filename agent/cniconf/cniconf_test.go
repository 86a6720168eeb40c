package cniconf

import (
	"encoding/json"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
)

var good = Config{
	PodCIDR: netip.MustParsePrefix("10.0.0.0/24"), RouterIP: netip.MustParseAddr("10.0.0.1"),
	DeviceMTU: 1500, RouteMTU: 1450, EndpointDir: "/var/run/routemode/endpoints", IPAMDir: "/var/run/routemode/ipam",
}

func TestRenderParseRoundTrip(t *testing.T) {
	list, err := Render(good)
	if err != nil {
		t.Fatal(err)
	}
	stdin, err := PluginStdin(list)
	if err != nil {
		t.Fatal(err)
	}
	n, c, err := Parse(stdin)
	if err != nil {
		t.Fatal(err)
	}
	if c != good || n.CNIVersion != "1.1.0" || n.Name != NetworkName || n.Type != PluginType {
		t.Errorf("round trip: %+v %+v", c, n.PluginConf)
	}
}

// The tests wire pods with PluginStdin, so it must hand the plugin what
// libcni, the runtimes' library, does: the highest offered spec version
// (GC and STATUS need 1.1.0) and the list's name.
func TestPluginStdinMatchesLibcni(t *testing.T) {
	list, err := Render(good)
	if err != nil {
		t.Fatal(err)
	}
	cl, err := libcni.ConfListFromBytes(list)
	if err != nil {
		t.Fatal(err)
	}
	if cl.CNIVersion != "1.1.0" {
		t.Errorf("libcni negotiated %s, want 1.1.0", cl.CNIVersion)
	}
	want, err := libcni.InjectConf(cl.Plugins[0], map[string]any{"name": cl.Name, "cniVersion": cl.CNIVersion})
	if err != nil {
		t.Fatal(err)
	}
	got, err := PluginStdin(list)
	if err != nil {
		t.Fatal(err)
	}
	var g, w map[string]any
	if err := errors.Join(json.Unmarshal(got, &g), json.Unmarshal(want.Bytes, &w)); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(g, w) {
		t.Errorf("PluginStdin:\n%s\nlibcni:\n%s", got, want.Bytes)
	}

	// A runtime that reads only cniVersion gets 1.0.0, which it can decode.
	var old map[string]any
	if err := json.Unmarshal(list, &old); err != nil {
		t.Fatal(err)
	}
	if old["cniVersion"] != "1.0.0" {
		t.Errorf("cniVersion = %v, want 1.0.0 for runtimes before libcni 1.2", old["cniVersion"])
	}
}

func TestParseErrors(t *testing.T) {
	cases := map[string]struct {
		stdin string
		code  uint
		msg   string
	}{
		"empty":             {"", types.ErrDecodingFailure, "empty"},
		"not JSON":          {"{", types.ErrDecodingFailure, "not valid JSON"},
		"missing podCIDR":   {`{"routerIP":"10.0.0.1"}`, types.ErrInvalidNetworkConfig, "podCIDR is missing"},
		"podCIDR garbage":   {`{"podCIDR":"ten"}`, types.ErrInvalidNetworkConfig, `podCIDR "ten" is not a CIDR`},
		"podCIDR host bits": {`{"podCIDR":"10.0.0.5/24"}`, types.ErrInvalidNetworkConfig, "network address"},
		"podCIDR IPv6":      {`{"podCIDR":"fd00::/64"}`, types.ErrInvalidNetworkConfig, "IPv4"},
		"missing routerIP":  {`{"podCIDR":"10.0.0.0/24"}`, types.ErrInvalidNetworkConfig, "routerIP is missing"},
		"missing MTU":       {`{"podCIDR":"10.0.0.0/24","routerIP":"10.0.0.1"}`, types.ErrInvalidNetworkConfig, "deviceMTU is missing"},
		"route above device": {`{"podCIDR":"10.0.0.0/24","routerIP":"10.0.0.1","deviceMTU":1500,"routeMTU":1600}`,
			types.ErrInvalidNetworkConfig, "routeMTU 1600"},
		"relative dirs": {`{"podCIDR":"10.0.0.0/24","routerIP":"10.0.0.1","deviceMTU":1500,"routeMTU":1450,"endpointDir":"e","ipamDir":"i"}`,
			types.ErrInvalidNetworkConfig, "absolute"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			_, _, err := Parse([]byte(tc.stdin))
			var e *types.Error
			if !errors.As(err, &e) {
				t.Fatalf("err %v is not a CNI error", err)
			}
			if e.Code != tc.code || !strings.Contains(e.Msg, tc.msg) {
				t.Errorf("got code %d %q, want code %d containing %q", e.Code, e.Msg, tc.code, tc.msg)
			}
		})
	}
}

func TestWriteIsIdempotent(t *testing.T) {
	dir := t.TempDir()
	if changed, err := Write(dir, good); err != nil || !changed {
		t.Fatalf("first write: %v %v", changed, err)
	}
	if changed, err := Write(dir, good); err != nil || changed {
		t.Fatalf("second write changed=%v err=%v, want no change", changed, err)
	}
	lower := good
	lower.RouteMTU = 1400
	if changed, err := Write(dir, lower); err != nil || !changed {
		t.Fatalf("MTU change: %v %v", changed, err)
	}
	c, err := Read(dir)
	if err != nil || c.RouteMTU != 1400 {
		t.Fatalf("read back %+v %v", c, err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 || entries[0].Name() != FileName {
		t.Errorf("directory holds %v, want only %s", entries, FileName)
	}
	if _, err := Write(filepath.Join(dir, "x"), Config{}); err == nil {
		t.Error("an invalid config was written")
	}
}
