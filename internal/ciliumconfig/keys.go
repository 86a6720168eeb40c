// Package ciliumconfig translates between Cilium's cilium-config ConfigMap
// and a RoutingMode spec. It is pure: no cluster access, no printing. The
// command-line tool reads and writes the ConfigMap; this package only
// decides what the keys mean.
//
// Import accepts both generations of keys (≤1.13: tunnel, native-routing-cidr;
// ≥1.14: routing-mode, tunnel-protocol, ipv4-native-routing-cidr), refuses
// contradictions and anything a RoutingMode cannot express, and reports the
// host routing Cilium would really run, not just the one it was asked for.
// Export writes the keys back, new style or ≤1.13 style.
package ciliumconfig

// cilium-config keys this package reads or writes. Keys not listed here are
// unrelated to routing and ignored on import.
const (
	KeyTunnel                = "tunnel" // ≤1.14, removed in 1.15
	KeyRoutingMode           = "routing-mode"
	KeyTunnelProtocol        = "tunnel-protocol"
	KeyTunnelPort            = "tunnel-port"
	KeyNativeRoutingCIDR     = "native-routing-cidr" // ≤1.11, removed in 1.12
	KeyIPv4NativeRoutingCIDR = "ipv4-native-routing-cidr"
	KeyIPv6NativeRoutingCIDR = "ipv6-native-routing-cidr"
	KeyAutoDirectNodeRoutes  = "auto-direct-node-routes"
	KeyHostLegacyRouting     = "enable-host-legacy-routing"

	// Keys a RoutingMode cannot express when set to anything but their
	// default: importing them would silently change the datapath.
	KeySkipUnreachable  = "direct-routing-skip-unreachable"
	KeyUnderlayProtocol = "underlay-protocol"
	KeyEnableIPv4       = "enable-ipv4"
	KeyEnableIPv6       = "enable-ipv6"
	KeySourcePortRange  = "tunnel-source-port-range"
	KeyMTU              = "mtu"

	// Keys that decide whether Cilium really runs eBPF host routing.
	KeyKubeProxyReplacement = "kube-proxy-replacement"
	KeyBPFMasquerade        = "enable-bpf-masquerade"
	KeyIPv4Masquerade       = "enable-ipv4-masquerade"
	KeyMasquerade           = "masquerade" // ≤1.9 name of enable-ipv4-masquerade
	KeyEndpointRoutes       = "enable-endpoint-routes"
	KeyIPsec                = "enable-ipsec"
	KeyWireGuard            = "enable-wireguard"
)

// Values of routing-mode.
const (
	routingModeTunnel = "tunnel"
	routingModeNative = "native"
	routingModeHybrid = "hybrid"
)

// Cilium's default UDP ports per encapsulation, used when tunnel-port is
// unset or 0 ("use the protocol's default").
const (
	defaultVXLANPort  = 8472
	defaultGenevePort = 6081
)
