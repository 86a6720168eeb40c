//go:build linux

package cli

import (
	"context"
	"net"
	"time"

	"github.com/routemode/routemode/agent/hostrouting"
	"github.com/routemode/routemode/bpf"
)

// pinnedMonitor reads the events through the agent's own code, so the
// command decodes them the way the programs wrote them.
type pinnedMonitor struct{ m *hostrouting.Monitor }

func openPinnedMonitor(ctx context.Context, pinDir string, waiting func()) (eventSource, error) {
	m, err := hostrouting.OpenMonitor(ctx, pinDir, waiting)
	if err != nil {
		return nil, err
	}
	return pinnedMonitor{m}, nil
}

func (p pinnedMonitor) Read(deadline time.Time) (monitorEvent, error) {
	e, err := p.m.Read(deadline)
	if err != nil {
		return monitorEvent{}, err
	}
	return monitorEvent{
		CPU: e.Cpu, Program: bpf.Program(e.Prog), Reason: bpf.Reason(e.Reason), Endpoint: e.Endpoint,
		IfindexIn: e.IfindexIn, IfindexOut: e.IfindexOut, Len: e.Len, Data: append([]byte(nil), e.Packet()...),
	}, nil
}

func (p pinnedMonitor) Lost() (uint64, error) { return p.m.Lost() }
func (p pinnedMonitor) Close() error          { return p.m.Close() }

func interfaceName(ifindex int) (string, error) {
	i, err := net.InterfaceByIndex(ifindex)
	if err != nil {
		return "", err
	}
	return i.Name, nil
}
