package ciliumconfig

import (
	"fmt"
	"maps"
	"slices"
	"strconv"

	"github.com/routemode/routemode/api/v1alpha1"
	"github.com/routemode/routemode/internal/specvalidate"
)

// ExportOptions chooses the key generation to write.
type ExportOptions struct {
	// LegacyKeys writes Cilium ≤1.13 keys (tunnel: vxlan|geneve|disabled,
	// kube-proxy-replacement: strict) instead of routing-mode and
	// tunnel-protocol, which Cilium reads from 1.14 on.
	LegacyKeys bool
}

// Patch is the change to cilium-config that makes Cilium run a spec.
type Patch struct {
	// Set holds the keys to write.
	Set map[string]string
	// Remove lists keys to delete because a stale value would contradict
	// Set (for example an old tunnel: vxlan next to routing-mode: native).
	Remove []string
	// Notes tell the user what else the change implies.
	Notes []string
}

// MergePatch is the patch as a JSON merge patch for the ConfigMap, where a
// null value deletes a key: kubectl patch --type merge applies it as is.
func (p Patch) MergePatch() map[string]any {
	data := make(map[string]any, len(p.Set)+len(p.Remove))
	for k, v := range p.Set {
		data[k] = v
	}
	for _, k := range p.Remove {
		data[k] = nil
	}
	return map[string]any{"data": data}
}

// Data is the resulting key set for a ConfigMap that holds nothing else,
// the input Import expects.
func (p Patch) Data() map[string]string {
	return maps.Clone(p.Set)
}

// Normalize fills in the values the API server defaults and clears what
// cilium-config cannot carry (rollout), giving the spec Import returns for
// Export's output.
func Normalize(spec v1alpha1.RoutingModeSpec) v1alpha1.RoutingModeSpec {
	out := v1alpha1.RoutingModeSpec{
		Tunnel:               spec.Tunnel,
		TunnelPort:           spec.TunnelPort,
		NativeRoutingCIDR:    spec.NativeRoutingCIDR,
		AutoDirectNodeRoutes: spec.AutoDirectNodeRoutes,
		HostRouting:          spec.HostRouting,
	}
	if out.Tunnel == "" {
		out.Tunnel = v1alpha1.TunnelVXLAN
	}
	if out.TunnelPort == 0 {
		out.TunnelPort = v1alpha1.DefaultTunnelPort
	}
	if out.HostRouting == "" {
		out.HostRouting = v1alpha1.HostRoutingLegacy
	}
	return out
}

// Export returns the cilium-config keys for spec. It refuses a spec the
// CRD would refuse, since Cilium would then fail or run something else.
func Export(spec v1alpha1.RoutingModeSpec, opts ExportOptions) (Patch, error) {
	if err := specvalidate.Validate(spec); err != nil {
		return Patch{}, fmt.Errorf("cannot export an invalid RoutingMode spec: %w; fix the spec first (kubectl explain routingmode.spec)", err)
	}
	s := Normalize(spec)
	p := Patch{Set: map[string]string{}}
	remove := map[string]bool{KeyNativeRoutingCIDR: true} // ≤1.11 key, never written

	tunnelling := s.Tunnel != v1alpha1.TunnelDisabled
	if opts.LegacyKeys {
		p.Set[KeyTunnel] = string(s.Tunnel)
		remove[KeyRoutingMode], remove[KeyTunnelProtocol] = true, true
	} else {
		remove[KeyTunnel] = true
		if tunnelling {
			p.Set[KeyRoutingMode] = routingModeTunnel
			p.Set[KeyTunnelProtocol] = string(s.Tunnel)
		} else {
			p.Set[KeyRoutingMode] = routingModeNative
			remove[KeyTunnelProtocol] = true // cilium/cilium#42648: omit it in native mode
		}
	}

	// The port is always written while tunnelling, so a Geneve tunnel
	// keeps the spec's port rather than Cilium's 6081 default. In native
	// routing it matters only to keep a non-default port for a later
	// switch back.
	if tunnelling || s.TunnelPort != defaultVXLANPort {
		p.Set[KeyTunnelPort] = strconv.Itoa(int(s.TunnelPort))
	} else {
		remove[KeyTunnelPort] = true
	}

	if s.NativeRoutingCIDR != "" {
		p.Set[KeyIPv4NativeRoutingCIDR] = s.NativeRoutingCIDR
	} else {
		remove[KeyIPv4NativeRoutingCIDR] = true
	}
	p.Set[KeyAutoDirectNodeRoutes] = strconv.FormatBool(s.AutoDirectNodeRoutes)

	if s.HostRouting == v1alpha1.HostRoutingBPF {
		// Without these two Cilium silently falls back to legacy host
		// routing, so the keys are part of what "bpf" means.
		p.Set[KeyHostLegacyRouting] = "false"
		p.Set[KeyKubeProxyReplacement] = "true"
		if opts.LegacyKeys {
			p.Set[KeyKubeProxyReplacement] = "strict"
		}
		p.Set[KeyBPFMasquerade] = "true"
		p.Notes = append(p.Notes,
			"hostRouting: bpf needs Cilium's eBPF kube-proxy replacement and eBPF masquerading, so the patch sets "+
				KeyKubeProxyReplacement+" and "+KeyBPFMasquerade+": remove kube-proxy from the cluster first, and use a kernel of 5.10 or later")
	} else {
		p.Set[KeyHostLegacyRouting] = "true"
	}
	p.Notes = append(p.Notes,
		"Cilium reads cilium-config only when its agents start: restart them (kubectl -n kube-system rollout restart daemonset/cilium), which applies the change on all nodes without routemode's make-before-break rollout")

	p.Remove = slices.Sorted(maps.Keys(remove))
	return p, nil
}
