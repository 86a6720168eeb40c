//go:build linux

package cli

import (
	"strings"

	"github.com/routemode/routemode/agent/hostrouting"
)

// listPinnedEndpoints reads the map through the agent's own code, so the
// command always decodes the map the way the programs wrote it.
func listPinnedEndpoints(pinDir string) ([]endpoint, error) {
	eps, err := hostrouting.ListEndpoints(pinDir)
	if err != nil {
		return nil, err
	}
	out := make([]endpoint, 0, len(eps))
	for _, e := range eps {
		out = append(out, endpoint{
			IP:      e.IP.String(),
			ID:      e.ID,
			Flags:   e.Flags,
			IfIndex: e.IfIndex,
			MAC:     strings.ToUpper(e.MAC.String()),
			NodeMAC: strings.ToUpper(e.NodeMAC.String()),
			Line:    hostrouting.FormatEndpoint(e),
		})
	}
	return out, nil
}

// listPinnedMetrics returns the counters that counted anything.
func listPinnedMetrics(pinDir string) ([]metric, error) {
	cs, err := hostrouting.ReadCounters(pinDir)
	if err != nil {
		return nil, err
	}
	var out []metric
	for _, c := range cs {
		if c.Packets > 0 {
			out = append(out, metric{Program: c.Program.String(), Verdict: string(c.Verdict), Reason: c.Reason.String(), Packets: c.Packets, Bytes: c.Bytes})
		}
	}
	return out, nil
}

func listPinnedDirectRoutes(pinDir string) ([]directRoute, error) {
	routes, err := hostrouting.ListDirectRoutes(pinDir)
	if err != nil {
		return nil, err
	}
	out := make([]directRoute, 0, len(routes))
	for _, r := range routes {
		out = append(out, directRoute{
			Destination: r.Dst.String(),
			Gateway:     r.Gateway.String(),
			IfIndex:     r.IfIndex,
			MTU:         r.MTU,
			Line:        hostrouting.FormatDirectRoute(r),
		})
	}
	return out, nil
}
