package ciliumconfig

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/routemode/routemode/api/v1alpha1"
	"github.com/routemode/routemode/internal/specvalidate"
)

// Result is an imported RoutingMode spec and the warnings a user should
// read before applying it.
type Result struct {
	// Spec holds only the fields cilium-config determines (tunnel,
	// tunnelPort, nativeRoutingCIDR, autoDirectNodeRoutes, hostRouting),
	// with Cilium's effective values filled in; rollout is left to the
	// CRD defaults because Cilium has no equivalent.
	Spec v1alpha1.RoutingModeSpec
	// Warnings explain values that differ from what the ConfigMap seems to
	// ask for (host routing fallback) or keys that were read and ignored.
	Warnings []string
}

// Import translates the data of a cilium-config ConfigMap. It returns an
// *ImportError listing every key that contradicts another, is invalid, or
// asks for something a RoutingMode cannot express; it never drops such a key.
func Import(data map[string]string) (Result, error) {
	im := importer{data: data}
	im.run()
	if len(im.problems) > 0 {
		return Result{}, &ImportError{Problems: im.problems}
	}
	// The CRD rules are checked again on the finished spec: the per-key
	// checks above should already have caught everything, and this keeps
	// Import from ever printing a spec the API server would refuse.
	if err := specvalidate.Validate(im.spec); err != nil {
		return Result{}, &ImportError{Problems: []Problem{{
			Keys: []string{"cilium-config"},
			What: "the translated RoutingMode is invalid: " + err.Error(),
			Fix:  "please report this as a routemode bug, with the ConfigMap",
		}}}
	}
	return Result{Spec: im.spec, Warnings: im.warnings}, nil
}

type importer struct {
	data     map[string]string
	spec     v1alpha1.RoutingModeSpec
	problems []Problem
	warnings []string
}

func (im *importer) problem(what, fix string, keys ...string) {
	im.problems = append(im.problems, Problem{Keys: keys, What: what, Fix: fix})
}

func (im *importer) warn(format string, args ...any) {
	im.warnings = append(im.warnings, fmt.Sprintf(format, args...))
}

// get returns a key's value. Cilium reads the ConfigMap through viper, where
// an empty value means "use the default", so empty counts as unset.
func (im *importer) get(key string) (string, bool) {
	v := strings.TrimSpace(im.data[key])
	return v, v != ""
}

// kv formats key=value for messages.
func (im *importer) kv(key string) string {
	v, _ := im.get(key)
	return key + "=" + v
}

// boolean parses a key the way Go's strconv.ParseBool does (Cilium's viper
// accepts the same words) and records a problem for anything else, because
// Cilium would read an unparsable value as false without saying so.
func (im *importer) boolean(key string) (value, set bool) {
	v, ok := im.get(key)
	if !ok {
		return false, false
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		im.problem(fmt.Sprintf("%q is not a boolean", v),
			`write "true" or "false"`, im.kv(key))
		return false, false
	}
	return b, true
}

func (im *importer) run() {
	im.refuseInexpressible()
	im.importTunnel()
	im.importTunnelPort()
	im.importCIDR()
	im.importADNR()
	im.importHostRouting()
}

// refuseInexpressible records a problem for every key whose value changes
// the datapath in a way a RoutingMode has no field for.
func (im *importer) refuseInexpressible() {
	if v, ok := im.get(KeyIPv6NativeRoutingCIDR); ok {
		im.problem(fmt.Sprintf("IPv6 native routing (%s) cannot be expressed: routemode routes IPv4 pods only", v),
			"keep this cluster's routing under Cilium, or remove IPv6 pod networking first", im.kv(KeyIPv6NativeRoutingCIDR))
	}
	if on, _ := im.boolean(KeyEnableIPv6); on {
		im.problem("IPv6 pod networking cannot be expressed: routemode routes IPv4 pods only",
			"keep this cluster's routing under Cilium, or disable IPv6 pods first", im.kv(KeyEnableIPv6))
	}
	if on, set := im.boolean(KeyEnableIPv4); set && !on {
		im.problem("an IPv6-only cluster cannot be expressed: routemode routes IPv4 pods only",
			"keep this cluster's routing under Cilium", im.kv(KeyEnableIPv4))
	}
	if on, _ := im.boolean(KeySkipUnreachable); on {
		im.problem("a RoutingMode has no direct-routing-skip-unreachable: routemode decides per peer and keeps gateway-routed peers on the tunnel during a rollout, but cannot end in that mixed state",
			"remove the key (and make every node reach its peers without a gateway), or keep this cluster's routing under Cilium",
			im.kv(KeySkipUnreachable))
	}
	if v, ok := im.get(KeySourcePortRange); ok && v != "0-0" {
		im.problem("a RoutingMode cannot set the tunnel's UDP source port range",
			`remove the key or set it to "0-0" (the kernel's choice)`, im.kv(KeySourcePortRange))
	}
	if v, ok := im.get(KeyMTU); ok && v != "0" {
		im.warn("%s=%s is not imported: routemode derives the pod MTU from the underlay device (minus 50 bytes while tunnelling)", KeyMTU, v)
	}
}

// importTunnel sets spec.tunnel from tunnel (≤1.14) and routing-mode plus
// tunnel-protocol (≥1.14), refusing any pair that disagrees: Cilium 1.14
// reads both and later versions ignore tunnel, so a disagreement means the
// mode depends on the Cilium version, and guessing would switch a cluster.
func (im *importer) importTunnel() {
	oldTunnel, hasOld := im.get(KeyTunnel)
	mode, hasMode := im.get(KeyRoutingMode)
	proto, hasProto := im.get(KeyTunnelProtocol)

	if hasOld {
		switch oldTunnel {
		case "vxlan", "geneve", "disabled":
		default:
			im.problem(fmt.Sprintf("%q is not a tunnel Cilium knows", oldTunnel),
				"write vxlan, geneve or disabled", im.kv(KeyTunnel))
			return
		}
	}
	if hasProto {
		switch proto {
		case "vxlan", "geneve":
		case "disabled":
			// cilium/cilium#42648: the agent refuses it; native routing
			// is routing-mode: native.
			im.problem(`"disabled" is not a tunnel protocol (Cilium refuses it too)`,
				"for native routing set routing-mode: native and remove tunnel-protocol", im.kv(KeyTunnelProtocol))
			return
		default:
			im.problem(fmt.Sprintf("%q is not a tunnel protocol Cilium knows", proto),
				"write vxlan or geneve", im.kv(KeyTunnelProtocol))
			return
		}
	}
	if hasMode {
		switch mode {
		case routingModeTunnel, routingModeNative:
		case routingModeHybrid:
			im.problem("hybrid routing (native inside a subnet, tunnel across subnets) cannot be expressed: a RoutingMode ends either all tunnel or all native",
				"choose routing-mode: tunnel or native in the file you import, or keep this cluster's routing under Cilium", im.kv(KeyRoutingMode))
			return
		default:
			im.problem(fmt.Sprintf("%q is not a routing mode Cilium knows", mode),
				"write tunnel or native", im.kv(KeyRoutingMode))
			return
		}
	}

	switch {
	case hasMode && mode == routingModeNative:
		if hasOld && oldTunnel != "disabled" {
			im.conflict(KeyTunnel, "tunnelling", KeyRoutingMode, "native routing")
			return
		}
		im.ignoredInNative(hasProto, KeyTunnelProtocol)
		im.spec.Tunnel = v1alpha1.TunnelDisabled
	case hasMode: // routing-mode: tunnel
		switch {
		case hasOld && oldTunnel == "disabled":
			im.conflict(KeyTunnel, "native routing", KeyRoutingMode, "tunnelling")
			return
		case hasOld && hasProto && oldTunnel != proto:
			im.conflict(KeyTunnel, oldTunnel, KeyTunnelProtocol, proto)
			return
		case hasOld && !hasProto && oldTunnel != "vxlan":
			// Cilium 1.14 takes geneve from tunnel; 1.15+ ignores
			// tunnel and defaults tunnel-protocol to vxlan.
			im.problem(fmt.Sprintf("the protocol depends on the Cilium version: 1.14 uses %s from tunnel, 1.15 and later ignore tunnel and use vxlan", oldTunnel),
				fmt.Sprintf("set tunnel-protocol: %s and remove tunnel", oldTunnel), im.kv(KeyTunnel), im.kv(KeyRoutingMode))
			return
		}
		im.spec.Tunnel = v1alpha1.TunnelVXLAN
		if hasProto {
			im.spec.Tunnel = v1alpha1.Tunnel(proto)
		}
	case hasOld:
		if oldTunnel == "disabled" {
			im.ignoredInNative(hasProto, KeyTunnelProtocol)
			im.spec.Tunnel = v1alpha1.TunnelDisabled
			break
		}
		if hasProto && proto != oldTunnel {
			im.conflict(KeyTunnel, oldTunnel, KeyTunnelProtocol, proto)
			return
		}
		im.spec.Tunnel = v1alpha1.Tunnel(oldTunnel)
	default: // Cilium's defaults: routing-mode tunnel, tunnel-protocol vxlan
		im.spec.Tunnel = v1alpha1.TunnelVXLAN
		if hasProto {
			im.spec.Tunnel = v1alpha1.Tunnel(proto)
		}
	}

	if v, ok := im.get(KeyUnderlayProtocol); ok {
		switch {
		case v == "ipv4":
		case v == "ipv6" && im.spec.Tunnel == v1alpha1.TunnelDisabled:
			im.warn("%s=ipv6 is ignored: it only applies to tunnelling and the imported mode is native routing", KeyUnderlayProtocol)
		case v == "ipv6":
			im.problem("tunnelling over an IPv6 underlay cannot be expressed: routemode tunnels over IPv4 only",
				"switch the underlay to ipv4 first, or keep this cluster's routing under Cilium",
				append([]string{im.kv(KeyUnderlayProtocol)}, im.modeKeys()...)...)
		default:
			im.problem(fmt.Sprintf("%q is not an underlay protocol Cilium knows", v),
				"write ipv4 or ipv6", im.kv(KeyUnderlayProtocol))
		}
	}
}

// modeKeys names the keys that decided the routing mode, for messages
// about a rule that involves the mode.
func (im *importer) modeKeys() []string {
	var keys []string
	for _, k := range []string{KeyRoutingMode, KeyTunnel, KeyTunnelProtocol} {
		if _, ok := im.get(k); ok {
			keys = append(keys, im.kv(k))
		}
	}
	if len(keys) == 0 {
		keys = append(keys, KeyRoutingMode+" unset (Cilium's default: tunnel, vxlan)")
	}
	return keys
}

func (im *importer) conflict(keyA, meansA, keyB, meansB string) {
	im.problem(fmt.Sprintf("conflicting keys: %s means %s but %s means %s", keyA, meansA, keyB, meansB),
		fmt.Sprintf("make them agree, or remove the old key %s (Cilium 1.15 and later ignore it) and keep %s", KeyTunnel, keyB),
		im.kv(keyA), im.kv(keyB))
}

// ignoredInNative warns about a tunnelling key that Cilium reads but does
// not use in native routing, so the user knows it was seen.
func (im *importer) ignoredInNative(set bool, key string) {
	if set {
		im.warn("%s is ignored: Cilium does not tunnel in native routing (remove the key when you next edit cilium-config)", im.kv(key))
	}
}

func (im *importer) importTunnelPort() {
	v, ok := im.get(KeyTunnelPort)
	port := 0
	if ok {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || n > 65535 {
			im.problem(fmt.Sprintf("%q is not a UDP port", v),
				"write a number from 1 to 65535 (VXLAN's default is 8472, Geneve's 6081), or remove the key", im.kv(KeyTunnelPort))
			return
		}
		port = n // 0 is Cilium's "the protocol's default"
	}
	if port == 0 {
		port = defaultVXLANPort
		if im.spec.Tunnel == v1alpha1.TunnelGeneve {
			port = defaultGenevePort
		}
	}
	im.spec.TunnelPort = int32(port)
}

func (im *importer) importCIDR() {
	newCIDR, hasNew := im.get(KeyIPv4NativeRoutingCIDR)
	oldCIDR, hasOld := im.get(KeyNativeRoutingCIDR)
	key, cidr := KeyIPv4NativeRoutingCIDR, newCIDR
	switch {
	case hasNew && hasOld && newCIDR != oldCIDR:
		im.problem(fmt.Sprintf("conflicting keys: %s and %s name different CIDRs", KeyNativeRoutingCIDR, KeyIPv4NativeRoutingCIDR),
			fmt.Sprintf("remove %s (Cilium 1.12 and later ignore it) and keep the CIDR that holds every node's podCIDR in %s", KeyNativeRoutingCIDR, KeyIPv4NativeRoutingCIDR),
			im.kv(KeyNativeRoutingCIDR), im.kv(KeyIPv4NativeRoutingCIDR))
		return
	case !hasNew && hasOld:
		key, cidr = KeyNativeRoutingCIDR, oldCIDR
	}
	if cidr == "" {
		if im.spec.Tunnel == v1alpha1.TunnelDisabled {
			im.problem("native routing needs a native routing CIDR (Cilium runs without one only when it does not masquerade, or with ip-masq-agent or ENI IPAM), and a RoutingMode always does",
				fmt.Sprintf("add %s: <the CIDR that holds every node's podCIDR, e.g. 10.0.0.0/16> to the ConfigMap and import it with -f FILE", KeyIPv4NativeRoutingCIDR),
				im.modeKeys()...)
		}
		return
	}
	if err := specvalidate.ValidateCIDR(cidr); err != nil {
		im.problem(err.Error(),
			"fix the value in cilium-config first: Cilium would route the wrong addresses", key+"="+cidr)
		return
	}
	im.spec.NativeRoutingCIDR = cidr
}

func (im *importer) importADNR() {
	on, _ := im.boolean(KeyAutoDirectNodeRoutes)
	if on && im.spec.Tunnel != "" && im.spec.Tunnel != v1alpha1.TunnelDisabled {
		// Cilium's agent exits on this combination (cilium/cilium#15196).
		im.problem(fmt.Sprintf("auto-direct-node-routes only works with native routing, and the mode is %s (Cilium's agent refuses to start with this too)", im.spec.Tunnel),
			"set auto-direct-node-routes: false, or switch to routing-mode: native",
			append([]string{im.kv(KeyAutoDirectNodeRoutes)}, im.modeKeys()...)...)
		return
	}
	im.spec.AutoDirectNodeRoutes = on
}

// importHostRouting reports the host routing Cilium actually runs. Cilium
// treats enable-host-legacy-routing=false as a wish: the agent switches to
// legacy routing, with only a log line, when a prerequisite is missing
// (pkg/kpr/initializer; see docs/cilium-compatibility.md,
// "Host routing: what Cilium really runs"). Emitting bpf then would turn eBPF
// host routing on during the first rollout, which must never happen
// silently, so any known fallback reason yields legacy plus a warning.
func (im *importer) importHostRouting() {
	legacy, set := im.boolean(KeyHostLegacyRouting)
	if set && legacy {
		im.spec.HostRouting = v1alpha1.HostRoutingLegacy
		return
	}
	reasons := im.hostRoutingFallbacks()
	if len(reasons) == 0 {
		im.spec.HostRouting = v1alpha1.HostRoutingBPF
		return
	}
	asked := KeyHostLegacyRouting + " is unset, so Cilium tries eBPF host routing"
	if set {
		asked = KeyHostLegacyRouting + "=false asks for eBPF host routing"
	}
	im.warn("%s, but Cilium falls back to legacy host routing because %s; emitting hostRouting: legacy. "+
		"Check with `cilium status` (Host Routing: Legacy or BPF) and set hostRouting: bpf only if it says BPF",
		asked, strings.Join(reasons, ", and "))
	im.spec.HostRouting = v1alpha1.HostRoutingLegacy
}

func (im *importer) hostRoutingFallbacks() []string {
	var reasons []string
	kpr, _ := im.get(KeyKubeProxyReplacement)
	if !slices.Contains([]string{"true", "strict"}, kpr) {
		if kpr == "" {
			kpr = "unset"
		}
		reasons = append(reasons, fmt.Sprintf("kube-proxy-replacement is %s (eBPF host routing needs it true, or strict before 1.14)", kpr))
	}
	masq := true // Cilium masquerades IPv4 by default
	if v, set := im.lenientBool(KeyIPv4Masquerade); set {
		masq = v
	} else if v, set := im.lenientBool(KeyMasquerade); set {
		masq = v
	}
	if bpfMasq, _ := im.lenientBool(KeyBPFMasquerade); masq && !bpfMasq {
		reasons = append(reasons, "masquerading uses iptables (enable-bpf-masquerade is not true)")
	}
	// Reasons that only older agents (1.9–1.18) fall back for. The Cilium
	// version is not in cilium-config, so the safe reading wins.
	if on, _ := im.lenientBool(KeyEndpointRoutes); on {
		reasons = append(reasons, "enable-endpoint-routes is true (Cilium 1.15 and older fall back for it)")
	}
	if on, _ := im.lenientBool(KeyIPsec); on {
		reasons = append(reasons, "enable-ipsec is true (Cilium before 1.19 falls back for it)")
	}
	if on, _ := im.lenientBool(KeyWireGuard); on {
		reasons = append(reasons, "enable-wireguard is true (older Cilium versions fall back for it)")
	}
	return reasons
}

// lenientBool reads a key that only informs the host routing guess: an
// unparsable value counts as false, as it does in Cilium, and is not an
// import error because the key is not translated.
func (im *importer) lenientBool(key string) (value, set bool) {
	v, ok := im.get(key)
	if !ok {
		return false, false
	}
	b, err := strconv.ParseBool(v)
	return b && err == nil, true
}
