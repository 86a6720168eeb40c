package specvalidate

import (
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/routemode/routemode/api/v1alpha1"
)

// specCase is one spec and whether the CRD accepts it. The same table runs
// against Validate here and against a real API server in crd_parity_test.go.
type specCase struct {
	spec v1alpha1.RoutingModeSpec
	// wantErr is a substring of Validate's error; empty means valid.
	wantErr string
}

func specCases() map[string]specCase {
	dur := func(d time.Duration) *metav1.Duration { return &metav1.Duration{Duration: d} }
	mu := func(v intstr.IntOrString) *intstr.IntOrString { return &v }
	return map[string]specCase{
		"empty spec takes the defaults":       {spec: v1alpha1.RoutingModeSpec{}},
		"vxlan":                               {spec: v1alpha1.RoutingModeSpec{Tunnel: v1alpha1.TunnelVXLAN, TunnelPort: 8472}},
		"geneve with a CIDR":                  {spec: v1alpha1.RoutingModeSpec{Tunnel: v1alpha1.TunnelGeneve, NativeRoutingCIDR: "10.0.0.0/8"}},
		"native with ADNR and bpf":            {spec: v1alpha1.RoutingModeSpec{Tunnel: v1alpha1.TunnelDisabled, NativeRoutingCIDR: "10.0.0.0/16", AutoDirectNodeRoutes: true, HostRouting: v1alpha1.HostRoutingBPF}},
		"native /0":                           {spec: v1alpha1.RoutingModeSpec{Tunnel: v1alpha1.TunnelDisabled, NativeRoutingCIDR: "0.0.0.0/0"}},
		"native /32":                          {spec: v1alpha1.RoutingModeSpec{Tunnel: v1alpha1.TunnelDisabled, NativeRoutingCIDR: "255.255.255.255/32"}},
		"port 1 and 65535 bounds":             {spec: v1alpha1.RoutingModeSpec{TunnelPort: 65535}},
		"rollout percentage and 1s":           {spec: v1alpha1.RoutingModeSpec{Rollout: v1alpha1.RolloutSpec{MaxUnavailable: mu(intstr.FromString("100%")), HealthCheckTimeout: dur(time.Second)}}},
		"rollout count":                       {spec: v1alpha1.RoutingModeSpec{Rollout: v1alpha1.RolloutSpec{MaxUnavailable: mu(intstr.FromInt32(3))}}},
		"unknown tunnel":                      {spec: v1alpha1.RoutingModeSpec{Tunnel: "ipip"}, wantErr: "spec.tunnel: Unsupported value"},
		"native without CIDR":                 {spec: v1alpha1.RoutingModeSpec{Tunnel: v1alpha1.TunnelDisabled}, wantErr: "nativeRoutingCIDR is required when tunnel is disabled"},
		"ADNR with default tunnel":            {spec: v1alpha1.RoutingModeSpec{AutoDirectNodeRoutes: true}, wantErr: "autoDirectNodeRoutes requires tunnel: disabled"},
		"ADNR with geneve":                    {spec: v1alpha1.RoutingModeSpec{Tunnel: v1alpha1.TunnelGeneve, AutoDirectNodeRoutes: true}, wantErr: "autoDirectNodeRoutes requires tunnel: disabled"},
		"CIDR host bits":                      {spec: v1alpha1.RoutingModeSpec{Tunnel: v1alpha1.TunnelDisabled, NativeRoutingCIDR: "10.0.0.1/16"}, wantErr: "the network address is 10.0.0.0/16"},
		"CIDR IPv6":                           {spec: v1alpha1.RoutingModeSpec{Tunnel: v1alpha1.TunnelDisabled, NativeRoutingCIDR: "fd00::/64"}, wantErr: "IPv4 CIDR: routemode routes IPv4 pods only"},
		"CIDR IPv4-mapped IPv6":               {spec: v1alpha1.RoutingModeSpec{NativeRoutingCIDR: "::ffff:10.0.0.0/104"}, wantErr: "may not be more than 18"},
		"CIDR without length":                 {spec: v1alpha1.RoutingModeSpec{NativeRoutingCIDR: "10.0.0.0"}, wantErr: "must be an IPv4 CIDR such as"},
		"CIDR leading zero":                   {spec: v1alpha1.RoutingModeSpec{NativeRoutingCIDR: "10.0.0.00/8"}, wantErr: "must be an IPv4 CIDR such as"},
		"CIDR too long":                       {spec: v1alpha1.RoutingModeSpec{NativeRoutingCIDR: "2001:db8:1234:5678::/64"}, wantErr: "may not be more than 18"},
		"port too high":                       {spec: v1alpha1.RoutingModeSpec{TunnelPort: 65536}, wantErr: "spec.tunnelPort"},
		"port negative":                       {spec: v1alpha1.RoutingModeSpec{TunnelPort: -1}, wantErr: "spec.tunnelPort"},
		"unknown host routing":                {spec: v1alpha1.RoutingModeSpec{HostRouting: "BPF"}, wantErr: "spec.hostRouting: Unsupported value"},
		"maxUnavailable 0":                    {spec: v1alpha1.RoutingModeSpec{Rollout: v1alpha1.RolloutSpec{MaxUnavailable: mu(intstr.FromInt32(0))}}, wantErr: "maxUnavailable must be"},
		"maxUnavailable 0%":                   {spec: v1alpha1.RoutingModeSpec{Rollout: v1alpha1.RolloutSpec{MaxUnavailable: mu(intstr.FromString("0%"))}}, wantErr: "maxUnavailable must be"},
		"maxUnavailable 101%":                 {spec: v1alpha1.RoutingModeSpec{Rollout: v1alpha1.RolloutSpec{MaxUnavailable: mu(intstr.FromString("101%"))}}, wantErr: "maxUnavailable must be"},
		"maxUnavailable string count":         {spec: v1alpha1.RoutingModeSpec{Rollout: v1alpha1.RolloutSpec{MaxUnavailable: mu(intstr.FromString("2"))}}, wantErr: "maxUnavailable must be"},
		"healthCheckTimeout below 1s":         {spec: v1alpha1.RoutingModeSpec{Rollout: v1alpha1.RolloutSpec{HealthCheckTimeout: dur(500 * time.Millisecond)}}, wantErr: "healthCheckTimeout must be at least 1s"},
		"two rules at once are both reported": {spec: v1alpha1.RoutingModeSpec{Tunnel: v1alpha1.TunnelVXLAN, TunnelPort: 70000, AutoDirectNodeRoutes: true}, wantErr: "spec.tunnelPort"},
	}
}

func TestValidate(t *testing.T) {
	for name, tc := range specCases() {
		t.Run(name, func(t *testing.T) {
			err := Validate(tc.spec)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("want valid, got %v", err)
			case tc.wantErr != "" && err == nil:
				t.Fatalf("want an error containing %q, got nil", tc.wantErr)
			case tc.wantErr != "" && !strings.Contains(err.Error(), tc.wantErr):
				t.Fatalf("want an error containing %q, got %v", tc.wantErr, err)
			}
		})
	}
}

func TestValidateReportsEveryRule(t *testing.T) {
	errs := Errors(v1alpha1.RoutingModeSpec{Tunnel: v1alpha1.TunnelVXLAN, TunnelPort: 70000, AutoDirectNodeRoutes: true, HostRouting: "x"})
	if len(errs) != 3 {
		t.Fatalf("want 3 errors (port, hostRouting, ADNR), got %d: %v", len(errs), errs)
	}
}

func TestValidateCIDR(t *testing.T) {
	for value, want := range map[string]string{
		"10.0.0.0/16":             "",
		"10.0.0.1/16":             "host bits set: write the network address, e.g. 10.0.0.0/16 rather than 10.0.0.1/16 (the network address is 10.0.0.0/16)",
		"fd00::/64":               "must be an IPv4 CIDR: routemode routes IPv4 pods only",
		"2001:db8:1234:5678::/64": "longer than an IPv4 CIDR can be",
		"10.0.0.0":                "must be an IPv4 CIDR such as 10.0.0.0/16",
	} {
		err := ValidateCIDR(value)
		switch {
		case want == "" && err != nil:
			t.Errorf("%s: %v", value, err)
		case want != "" && (err == nil || !strings.Contains(err.Error(), want)):
			t.Errorf("%s: want %q, got %v", value, want, err)
		case err != nil && strings.Contains(err.Error(), "spec."):
			t.Errorf("%s: message carries a field path: %v", value, err)
		}
	}
}
