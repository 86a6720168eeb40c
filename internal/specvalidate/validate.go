// Package specvalidate checks a RoutingModeSpec with the same rules the
// RoutingMode CRD enforces (OpenAPI enums and bounds plus the CEL rules), so
// that code building a spec outside the API server — routemodectl import, the
// operator's preflight, rollout undo — rejects exactly what the API server
// would reject, before anything is applied.
//
// The rules are tested against a real kube-apiserver in crd_parity_test.go;
// when the CRD markers in api/v1alpha1 change, change Validate too.
package specvalidate

import (
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"time"

	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/routemode/routemode/api/v1alpha1"
)

// Messages are the CRD's own x-kubernetes-validations messages, so a user
// sees the same sentence whichever side rejects the spec.
const (
	msgCIDRRequired = "nativeRoutingCIDR is required when tunnel is disabled: native routing must know which destinations are pod addresses, routed without masquerading (Cilium: native-routing-cidr); set it to the CIDR that holds every node's podCIDR, e.g. 10.0.0.0/16"
	msgADNRTunnel   = "autoDirectNodeRoutes requires tunnel: disabled: direct node routes would send pod traffic around the tunnel, so Cilium refuses this combination too; set tunnel: disabled, or set autoDirectNodeRoutes: false"
	msgNotCIDR      = "nativeRoutingCIDR must be an IPv4 CIDR such as 10.0.0.0/16"
	msgNotIPv4      = "nativeRoutingCIDR must be an IPv4 CIDR: routemode routes IPv4 pods only"
	msgHostBits     = "nativeRoutingCIDR has host bits set: write the network address, e.g. 10.0.0.0/16 rather than 10.0.0.1/16"
	msgMaxUnavail   = "maxUnavailable must be a count of at least 1 or a percentage from 1% to 100%"
	msgHealthTmo    = "healthCheckTimeout must be at least 1s, e.g. 2m"

	// maxCIDRLength is the CRD's maxLength on nativeRoutingCIDR: the
	// longest IPv4 CIDR, "255.255.255.255/32".
	maxCIDRLength = 18
)

// percentRE is the CRD's pattern for a percentage maxUnavailable.
var percentRE = regexp.MustCompile(`^([1-9][0-9]?|100)%$`)

// Validate returns nil when the API server would accept spec, or an error
// listing every violated rule with its field path. Zero values stand for
// fields the API server would default (tunnel vxlan, tunnelPort 8472,
// hostRouting legacy), because Go cannot tell "unset" from "zero" here and
// the server fills them in before the CEL rules run.
func Validate(spec v1alpha1.RoutingModeSpec) error {
	return Errors(spec).ToAggregate()
}

// Errors is Validate as a field.ErrorList, for callers that add their own
// findings (the operator's preflight) or print one line per problem.
func Errors(spec v1alpha1.RoutingModeSpec) field.ErrorList {
	p := field.NewPath("spec")
	var errs field.ErrorList

	tunnel := spec.Tunnel
	switch tunnel {
	case "":
		tunnel = v1alpha1.TunnelVXLAN // the CRD default
	case v1alpha1.TunnelVXLAN, v1alpha1.TunnelGeneve, v1alpha1.TunnelDisabled:
	default:
		errs = append(errs, field.NotSupported(p.Child("tunnel"), spec.Tunnel,
			[]string{string(v1alpha1.TunnelVXLAN), string(v1alpha1.TunnelGeneve), string(v1alpha1.TunnelDisabled)}))
	}

	// tunnelPort 0 is "unset" (omitempty), which the server defaults to 8472.
	if spec.TunnelPort < 0 || spec.TunnelPort > 65535 {
		errs = append(errs, field.Invalid(p.Child("tunnelPort"), spec.TunnelPort,
			"tunnelPort must be a UDP port from 1 to 65535; Cilium's VXLAN default is 8472, Geneve's 6081"))
	}

	switch spec.HostRouting {
	case "", v1alpha1.HostRoutingBPF, v1alpha1.HostRoutingLegacy:
	default:
		errs = append(errs, field.NotSupported(p.Child("hostRouting"), spec.HostRouting,
			[]string{string(v1alpha1.HostRoutingBPF), string(v1alpha1.HostRoutingLegacy)}))
	}

	if spec.NativeRoutingCIDR != "" {
		errs = append(errs, validateCIDR(p.Child("nativeRoutingCIDR"), spec.NativeRoutingCIDR)...)
	}

	// The two spec-level CEL rules. An invalid tunnel value is already
	// reported above; the rules then see it as "not disabled", as CEL would.
	if tunnel == v1alpha1.TunnelDisabled && spec.NativeRoutingCIDR == "" {
		errs = append(errs, field.Invalid(p, "", msgCIDRRequired))
	}
	if spec.AutoDirectNodeRoutes && tunnel != v1alpha1.TunnelDisabled {
		errs = append(errs, field.Invalid(p, "", msgADNRTunnel))
	}

	errs = append(errs, validateRollout(p.Child("rollout"), spec.Rollout)...)
	return errs
}

// ValidateCIDR checks one nativeRoutingCIDR value alone, for callers that
// read it from somewhere else (a cilium-config key) and want the CRD's words
// without a field path.
func ValidateCIDR(value string) error {
	errs := validateCIDR(field.NewPath("spec", "nativeRoutingCIDR"), value)
	if len(errs) == 0 {
		return nil
	}
	if errs[0].Type == field.ErrorTypeTooLong {
		return fmt.Errorf("%q is longer than an IPv4 CIDR can be (%d characters): %s", value, maxCIDRLength, msgNotIPv4)
	}
	return errors.New(errs[0].Detail)
}

// validateCIDR mirrors isCIDR, family() == 4 and the masked() comparison.
// netip.ParsePrefix is what the API server's CEL cidr library uses, so the
// same strings parse (no leading zeros, no zone, a prefix length required).
func validateCIDR(p *field.Path, value string) field.ErrorList {
	if len(value) > maxCIDRLength {
		return field.ErrorList{field.TooLong(p, value, maxCIDRLength)}
	}
	prefix, err := netip.ParsePrefix(value)
	if err != nil {
		return field.ErrorList{field.Invalid(p, value, msgNotCIDR)}
	}
	if !prefix.Addr().Is4() {
		return field.ErrorList{field.Invalid(p, value, msgNotIPv4)}
	}
	if prefix != prefix.Masked() {
		return field.ErrorList{field.Invalid(p, value,
			fmt.Sprintf("%s (the network address is %s)", msgHostBits, prefix.Masked()))}
	}
	return nil
}

func validateRollout(p *field.Path, r v1alpha1.RolloutSpec) field.ErrorList {
	var errs field.ErrorList
	if mu := r.MaxUnavailable; mu != nil {
		ok := false
		switch mu.Type {
		case intstr.Int:
			ok = mu.IntVal >= 1
		case intstr.String:
			ok = percentRE.MatchString(mu.StrVal)
		}
		if !ok {
			errs = append(errs, field.Invalid(p.Child("maxUnavailable"), mu.String(), msgMaxUnavail))
		}
	}
	if t := r.HealthCheckTimeout; t != nil && t.Duration < time.Second {
		errs = append(errs, field.Invalid(p.Child("healthCheckTimeout"), t.Duration.String(), msgHealthTmo))
	}
	return errs
}
