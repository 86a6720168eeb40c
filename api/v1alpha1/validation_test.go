package v1alpha1_test

import (
	"context"
	"strings"
	"testing"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"

	"github.com/routemode/routemode/api/v1alpha1"
	"github.com/routemode/routemode/internal/testenv"
)

var env *testenv.Env

func TestMain(m *testing.M) {
	testenv.Main(m, &env)
}

// TestRoutingModeAdmission applies good and bad objects to the real API
// server: every rule that needs only the object is enforced at admission
// with a message that says what to do.
func TestRoutingModeAdmission(t *testing.T) {
	tests := map[string]struct {
		yaml    string
		wantErr string
	}{
		"tunnel defaults": {yaml: `spec: {}`},
		"seed's native routing": {yaml: `
spec:
  tunnel: disabled
  nativeRoutingCIDR: 10.0.0.0/16
  autoDirectNodeRoutes: true
  hostRouting: bpf`},
		"percent maxUnavailable": {yaml: `
spec:
  rollout: {maxUnavailable: "25%", healthCheckTimeout: 30s, paused: true, autoRollback: false}`},
		"other name": {yaml: `
metadata: {name: prod}
spec: {}`, wantErr: `a cluster has one RoutingMode and it must be named "default"; rename this object to default`},
		"native without CIDR": {yaml: `
spec: {tunnel: disabled}`, wantErr: "nativeRoutingCIDR is required when tunnel is disabled"},
		"direct routes with tunnel": {yaml: `
spec: {tunnel: vxlan, autoDirectNodeRoutes: true}`, wantErr: "autoDirectNodeRoutes requires tunnel: disabled: direct node routes would send pod traffic around the tunnel, so Cilium refuses this combination too"},
		"unknown tunnel": {yaml: `
spec: {tunnel: ipip}`, wantErr: `spec.tunnel: Unsupported value: "ipip": supported values: "vxlan", "geneve", "disabled"`},
		"unknown host routing": {yaml: `
spec: {hostRouting: ebpf}`, wantErr: `spec.hostRouting: Unsupported value: "ebpf": supported values: "bpf", "legacy"`},
		"CIDR not a CIDR": {yaml: `
spec: {tunnel: disabled, nativeRoutingCIDR: 10.0.0.0}`, wantErr: "nativeRoutingCIDR must be an IPv4 CIDR such as 10.0.0.0/16"},
		"CIDR with host bits": {yaml: `
spec: {tunnel: disabled, nativeRoutingCIDR: 10.0.0.1/16}`, wantErr: "nativeRoutingCIDR has host bits set: write the network address, e.g. 10.0.0.0/16 rather than 10.0.0.1/16"},
		"IPv6 CIDR": {yaml: `
spec: {tunnel: disabled, nativeRoutingCIDR: "fd00::/64"}`, wantErr: "nativeRoutingCIDR must be an IPv4 CIDR: routemode routes IPv4 pods only"},
		"port out of range": {yaml: `
spec: {tunnelPort: 70000}`, wantErr: "spec.tunnelPort: Invalid value: 70000: spec.tunnelPort in body should be less than or equal to 65535"},
		"zero maxUnavailable": {yaml: `
spec: {rollout: {maxUnavailable: 0}}`, wantErr: "maxUnavailable must be a count of at least 1 or a percentage from 1% to 100%"},
		"bad percent": {yaml: `
spec: {rollout: {maxUnavailable: "150%"}}`, wantErr: "maxUnavailable must be a count of at least 1 or a percentage from 1% to 100%"},
		"tiny timeout": {yaml: `
spec: {rollout: {healthCheckTimeout: 10ms}}`, wantErr: "healthCheckTimeout must be at least 1s"},
		// Further ways a hand-written or templated RoutingMode goes wrong.
		// Each names the field and says what to write instead.
		"no spec": {yaml: `
metadata: {name: default}`, wantErr: `spec: Required value`},
		"empty CIDR with native": {yaml: `
spec: {tunnel: disabled, nativeRoutingCIDR: ""}`, wantErr: "nativeRoutingCIDR must be an IPv4 CIDR such as 10.0.0.0/16"},
		"direct routes with geneve": {yaml: `
spec: {tunnel: geneve, autoDirectNodeRoutes: true}`, wantErr: "set tunnel: disabled, or set autoDirectNodeRoutes: false"},
		"direct routes with defaulted tunnel": {yaml: `
spec: {autoDirectNodeRoutes: true}`, wantErr: "set tunnel: disabled, or set autoDirectNodeRoutes: false"},
		"tunnel in capitals": {yaml: `
spec: {tunnel: VXLAN}`, wantErr: `spec.tunnel: Unsupported value: "VXLAN": supported values: "vxlan", "geneve", "disabled"`},
		"empty tunnel": {yaml: `
spec: {tunnel: ""}`, wantErr: `spec.tunnel: Unsupported value: "": supported values: "vxlan", "geneve", "disabled"`},
		"Cilium's routing-mode word": {yaml: `
spec: {tunnel: native, nativeRoutingCIDR: 10.0.0.0/16}`, wantErr: `spec.tunnel: Unsupported value: "native": supported values: "vxlan", "geneve", "disabled"`},
		"host routing in capitals": {yaml: `
spec: {hostRouting: BPF}`, wantErr: `spec.hostRouting: Unsupported value: "BPF": supported values: "bpf", "legacy"`},
		"host routing as boolean": {yaml: `
spec: {hostRouting: true}`, wantErr: `spec.hostRouting: Unsupported value: true: supported values: "bpf", "legacy"`},
		"CIDR is a word": {yaml: `
spec: {tunnel: disabled, nativeRoutingCIDR: pods}`, wantErr: "nativeRoutingCIDR must be an IPv4 CIDR such as 10.0.0.0/16"},
		"CIDR prefix too long": {yaml: `
spec: {tunnel: disabled, nativeRoutingCIDR: 10.0.0.0/33}`, wantErr: "nativeRoutingCIDR must be an IPv4 CIDR such as 10.0.0.0/16"},
		"CIDR with leading zeros": {yaml: `
spec: {tunnel: disabled, nativeRoutingCIDR: 010.0.0.0/16}`, wantErr: "nativeRoutingCIDR must be an IPv4 CIDR such as 10.0.0.0/16"},
		"CIDR with netmask": {yaml: `
spec: {tunnel: disabled, nativeRoutingCIDR: 10.0.0.0/255.255.0.0}`, wantErr: "Too long: may not be more than 18 bytes"},
		"two CIDRs": {yaml: `
spec: {tunnel: disabled, nativeRoutingCIDR: "10.0.0.0/16,10.1.0.0/16"}`, wantErr: "Too long: may not be more than 18 bytes"},
		"CIDR host bits in last octet": {yaml: `
spec: {tunnel: disabled, nativeRoutingCIDR: 10.0.0.4/24}`, wantErr: "nativeRoutingCIDR has host bits set: write the network address"},
		"IPv4-mapped IPv6 CIDR": {yaml: `
spec: {tunnel: disabled, nativeRoutingCIDR: "::ffff:a00:0/112"}`, wantErr: "nativeRoutingCIDR must be an IPv4 CIDR"},
		"port zero": {yaml: `
spec: {tunnelPort: 0}`, wantErr: "spec.tunnelPort: Invalid value: 0: spec.tunnelPort in body should be greater than or equal to 1"},
		"negative port": {yaml: `
spec: {tunnelPort: -1}`, wantErr: "spec.tunnelPort in body should be greater than or equal to 1"},
		"port as text": {yaml: `
spec: {tunnelPort: vxlan}`, wantErr: `spec.tunnelPort: Invalid value: "string": spec.tunnelPort in body must be of type integer: "string"`},
		"negative maxUnavailable": {yaml: `
spec: {rollout: {maxUnavailable: -1}}`, wantErr: "maxUnavailable must be a count of at least 1 or a percentage from 1% to 100%"},
		"zero percent": {yaml: `
spec: {rollout: {maxUnavailable: "0%"}}`, wantErr: "maxUnavailable must be a count of at least 1 or a percentage from 1% to 100%"},
		"count as text": {yaml: `
spec: {rollout: {maxUnavailable: "1"}}`, wantErr: "maxUnavailable must be a count of at least 1 or a percentage from 1% to 100%"},
		"fractional percent": {yaml: `
spec: {rollout: {maxUnavailable: "12.5%"}}`, wantErr: "maxUnavailable must be a count of at least 1 or a percentage from 1% to 100%"},
		"zero timeout": {yaml: `
spec: {rollout: {healthCheckTimeout: 0s}}`, wantErr: "healthCheckTimeout must be at least 1s, e.g. 2m"},
		"negative timeout": {yaml: `
spec: {rollout: {healthCheckTimeout: -2m}}`, wantErr: "healthCheckTimeout must be at least 1s, e.g. 2m"},
		"timeout without unit": {yaml: `
spec: {rollout: {healthCheckTimeout: "120"}}`, wantErr: "healthCheckTimeout must be a duration such as 2m or 90s"},
		"timeout in words": {yaml: `
spec: {rollout: {healthCheckTimeout: two minutes}}`, wantErr: "healthCheckTimeout must be a duration such as 2m or 90s"},
		"paused as text": {yaml: `
spec: {rollout: {paused: "yes"}}`, wantErr: `spec.rollout.paused in body must be of type boolean: "string"`},
		"autoRollback as text": {yaml: `
spec: {rollout: {autoRollback: "no"}}`, wantErr: `spec.rollout.autoRollback in body must be of type boolean: "string"`},
		"direct routes as text": {yaml: `
spec: {tunnel: disabled, nativeRoutingCIDR: 10.0.0.0/16, autoDirectNodeRoutes: "true"}`, wantErr: `spec.autoDirectNodeRoutes in body must be of type boolean: "string"`},
		"rollout as list": {yaml: `
spec: {rollout: [maxUnavailable]}`, wantErr: `spec.rollout in body must be of type object: "array"`},
	}
	ctx := context.Background()
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			obj := &unstructured.Unstructured{}
			if err := yaml.Unmarshal([]byte(tc.yaml), &obj.Object); err != nil {
				t.Fatal(err)
			}
			obj.SetAPIVersion(v1alpha1.GroupVersion.String())
			obj.SetKind("RoutingMode")
			if obj.GetName() == "" {
				obj.SetName(v1alpha1.RoutingModeName)
			}
			err := env.Client.Create(ctx, obj)
			if err == nil {
				t.Cleanup(func() { _ = env.Client.Delete(ctx, obj) })
			}
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.wantErr != "" && err == nil:
				t.Fatalf("accepted, want refusal %q", tc.wantErr)
			case tc.wantErr != "" && (!apierrors.IsInvalid(err) || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("refused with %q, want %q", err, tc.wantErr)
			}
		})
	}
}

// TestRoutingModeDefaults checks that Cilium's defaults land in the stored
// object, where GitOps diffs and kubectl get show them.
func TestRoutingModeDefaults(t *testing.T) {
	ctx := context.Background()
	rm := &v1alpha1.RoutingMode{}
	rm.Name = v1alpha1.RoutingModeName
	if err := env.Client.Create(ctx, rm); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Client.Delete(ctx, rm) })
	s := rm.Spec
	if s.Tunnel != v1alpha1.TunnelVXLAN || s.TunnelPort != 8472 || s.HostRouting != v1alpha1.HostRoutingLegacy ||
		s.Rollout.MaxUnavailable == nil || s.Rollout.MaxUnavailable.IntValue() != 1 ||
		s.Rollout.AutoRollback == nil || !*s.Rollout.AutoRollback || s.Rollout.HealthCheckTimeout == nil {
		t.Errorf("stored spec = %+v, rollout %+v", s, s.Rollout)
	}
}
