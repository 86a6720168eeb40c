// Package health runs a node's health endpoint, routemode's cilium-health:
// a network namespace (default rmhealth-<node>) wired by agent/podnet like
// any pod, with node-side device lxc_health and the podCIDR's second address
// (.2, so every node derives any peer's health IP from the peer's podCIDR),
// answering UDP probes on port 4240. The agent probes every peer's health
// endpoint from its own, so a probe takes exactly a pod's path: pod veth,
// node routing, tunnel or underlay, the peer's routing and veth.
//
// The endpoint is recorded in the endpoint directory like a pod (container
// ID "routemode-health"), so route MTU updates and host routing include it.
package health

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/go-logr/logr"

	"github.com/routemode/routemode/agent/endpoint"
	"github.com/routemode/routemode/agent/nsutil"
	"github.com/routemode/routemode/agent/podnet"
	"github.com/routemode/routemode/internal/probe"
)

const (
	// Port is the UDP port health endpoints answer on.
	Port = 4240
	// ContainerID is the health endpoint's ID in the endpoint directory.
	ContainerID = "routemode-health"
	// IfName is the interface inside the health namespace.
	IfName = "eth0"
	// LXCName is the node-side device of the health endpoint.
	LXCName = "lxc_health"
)

// DefaultNSName is the health namespace name of node.
func DefaultNSName(node string) string { return "rmhealth-" + node }

// Endpoint is one node's health endpoint.
type Endpoint struct {
	NSName string
	Node   podnet.Node
	Store  endpoint.Store
	Log    logr.Logger

	mu     sync.Mutex
	inode  uint64
	echo   *probe.Echo
	pinger *probe.Pinger
}

// Ensure makes the health endpoint exist with address ip and starts its
// responder; changed is true when it had to (re)wire anything in the kernel.
func (h *Endpoint) Ensure(cfg podnet.Config, ip netip.Addr) (changed bool, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	hns, created, err := nsutil.Ensure(h.NSName)
	if err != nil {
		return false, fmt.Errorf("health namespace %s: %w", h.NSName, err)
	}
	defer hns.Close()
	if created {
		h.Log.Info("Changed kernel state", "op", "create health namespace "+h.NSName)
		changed = true
	}
	rec, ok, err := h.Store.Get(ContainerID, IfName)
	if err != nil {
		return changed, err
	}
	wired := ok && rec.IP == ip && rec.NetNS == hns.Path() && podnet.Check(h.Node, rec) == nil
	if ok && wired {
		// The device must be the one recorded, not a namesake.
		if l, err := h.Node.Handle.LinkByName(LXCName); err != nil || l.Attrs().Index != rec.LXCIndex {
			wired = false
		}
	}
	if !wired {
		ep, err := podnet.Setup(h.Node, cfg, podnet.Request{ContainerID: ContainerID, IfName: IfName, PodNS: hns, IP: ip, LXCName: LXCName})
		if err != nil {
			return changed, fmt.Errorf("wiring health endpoint: %w", err)
		}
		if err := h.Store.Put(ep); err != nil {
			return true, err
		}
		h.Log.Info("Changed kernel state", "op", fmt.Sprintf("wire health endpoint %s %s via %s", h.NSName, ip, LXCName))
		changed = true
	}
	return changed, h.startLocked(hns)
}

func nsInode(n ns.NetNS) uint64 {
	var st syscall.Stat_t
	if err := syscall.Fstat(int(n.Fd()), &st); err != nil {
		return 0
	}
	return st.Ino
}

// startLocked (re)opens the responder and the pinger inside the namespace,
// unless they already run in this very namespace.
func (h *Endpoint) startLocked(hns ns.NetNS) error {
	ino := nsInode(hns)
	if h.echo != nil && h.inode == ino {
		return nil
	}
	h.stopLocked()
	echo, err := probe.StartEcho(hns.Path(), netip.AddrPortFrom(netip.IPv4Unspecified(), Port))
	if err != nil {
		return fmt.Errorf("starting health responder: %w", err)
	}
	pinger, err := probe.NewPinger(hns.Path(), netip.AddrPortFrom(netip.IPv4Unspecified(), 0))
	if err != nil {
		echo.Close()
		return fmt.Errorf("starting health prober: %w", err)
	}
	h.echo, h.pinger, h.inode = echo, pinger, ino
	return nil
}

func (h *Endpoint) stopLocked() {
	if h.echo != nil {
		h.echo.Close()
		h.echo = nil
	}
	if h.pinger != nil {
		h.pinger.Close()
		h.pinger = nil
	}
}

// Close stops the responder and prober; the namespace stays.
func (h *Endpoint) Close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.stopLocked()
}

// Remove stops everything and deletes the namespace, the device and the
// record.
func (h *Endpoint) Remove() error {
	h.Close()
	if err := podnet.Teardown(h.Node, LXCName); err != nil {
		return err
	}
	if err := h.Store.Delete(ContainerID, IfName); err != nil {
		return err
	}
	return nsutil.Delete(h.NSName)
}

// Target is a peer's health endpoint.
type Target struct {
	Name string
	IP   netip.Addr
}

// Result is one peer's probe.
type Result struct {
	Name      string
	Reachable bool
	RTT       time.Duration
	Err       error
}

// Probe pings every target concurrently, each up to attempts times with
// timeout per attempt, and returns the results in target order.
func (h *Endpoint) Probe(ctx context.Context, targets []Target, attempts int, timeout time.Duration) []Result {
	h.mu.Lock()
	p := h.pinger
	h.mu.Unlock()
	out := make([]Result, len(targets))
	if p == nil {
		for i, t := range targets {
			out[i] = Result{Name: t.Name, Err: os.ErrClosed}
		}
		return out
	}
	var wg sync.WaitGroup
	for i, t := range targets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rtt, err := p.PingRetry(ctx, netip.AddrPortFrom(t.IP, Port), attempts, timeout)
			out[i] = Result{Name: t.Name, Reachable: err == nil, RTT: rtt, Err: err}
		}()
	}
	wg.Wait()
	return out
}
