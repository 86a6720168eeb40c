package netlab

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"time"

	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/routemode/routemode/agent/datapath"
	"github.com/routemode/routemode/agent/endpoint"
	"github.com/routemode/routemode/agent/nsutil"
	"github.com/routemode/routemode/agent/podnet"
	"github.com/routemode/routemode/internal/probe"
)

// EchoPort is the UDP port every pod's echo responder listens on.
const EchoPort = 7000

// Pod is a pod namespace wired to its node, with an echo responder.
type Pod struct {
	Node        *Node
	Name        string
	NSName      string
	ContainerID string
	IP          netip.Addr
	// Result is the plugin's answer, for pods AddPod made.
	Result *current.Result
	// Endpoint is the pod's record, for pods AddPodDirect made.
	Endpoint endpoint.Endpoint
	echo     *probe.Echo
}

// Path is the pod namespace's path.
func (p *Pod) Path() string { return nsutil.NamedPath(p.NSName) }

// EchoAddr is the pod's echo responder.
func (p *Pod) EchoAddr() netip.AddrPort { return netip.AddrPortFrom(p.IP, EchoPort) }

// EchoLoss says what the pod's echo responder lost itself: probes its
// socket dropped for want of buffer, and answers whose send failed (with
// the last error). The tool's loss, not the network's.
func (p *Pod) EchoLoss() string {
	n, last := p.echo.SendErrors()
	if n == 0 {
		return fmt.Sprintf("%d socket drops, no failed answer", p.echo.Drops())
	}
	return fmt.Sprintf("%d socket drops, %d failed answers (last: %s)", p.echo.Drops(), n, last)
}

// Ping sends one probe from p to target and waits for the answer.
func (p *Pod) Ping(ctx context.Context, target netip.AddrPort, size int, dontFragment bool) (time.Duration, error) {
	return probe.PingOnce(ctx, p.Path(), target, size, dontFragment, time.Second)
}

// NewPodNS creates an empty pod namespace and returns its name.
func (n *Node) NewPodNS(name string) (string, error) {
	nsName, p, err := n.podNS(name)
	if err != nil {
		return "", err
	}
	p.Close()
	return nsName, nil
}

func (n *Node) podNS(name string) (string, ns.NetNS, error) {
	nsName := fmt.Sprintf("%s-%s", n.NSName, name)
	p, err := n.Lab.newNS(nsName)
	if err != nil {
		return "", nil, fmt.Errorf("creating pod namespace: %w", err)
	}
	return nsName, p, nil
}

// AddPod creates a pod namespace and wires it with CNI ADD using the
// configuration the node's agent wrote (so the agent must have
// reconciled).
func (n *Node) AddPod(ctx context.Context, name string) (*Pod, error) {
	p := &Pod{Node: n, Name: name, ContainerID: fmt.Sprintf("%s%s-%s", n.Lab.ID, n.Name, name)}
	var err error
	if p.NSName, err = n.NewPodNS(name); err != nil {
		return nil, err
	}
	stdin, err := n.PluginStdin()
	if err != nil {
		return nil, err
	}
	res, err := n.CNI(ctx, "ADD", p.ContainerID, p.Path(), "eth0", stdin)
	if err != nil {
		return nil, err
	}
	if res.ExitCode != 0 {
		return nil, fmt.Errorf("CNI ADD of %s failed (exit %d): %s %s", name, res.ExitCode, res.Stdout, res.Stderr)
	}
	var r current.Result
	if err := json.Unmarshal(res.Stdout, &r); err != nil {
		return nil, fmt.Errorf("CNI ADD result of %s: %w: %s", name, err, res.Stdout)
	}
	if len(r.IPs) != 1 || len(r.Interfaces) == 0 {
		return nil, fmt.Errorf("CNI ADD result of %s has %d IPs and %d interfaces", name, len(r.IPs), len(r.Interfaces))
	}
	p.Result = &r
	p.IP, _ = netip.AddrFromSlice(r.IPs[0].Address.IP.To4())
	return p, n.finishPod(p, r.Interfaces[0].Name)
}

// AddPodDirect wires a pod with agent/podnet, as the plugin would, for labs
// without an agent: its default route has no MTU until ApplyDatapath
// sets one, and its gateway (the router IP) is local to the node once
// ApplyDatapath made rm_host.
func (n *Node) AddPodDirect(name string) (*Pod, error) {
	ip := n.PodCIDR.Addr().As4()
	ip[3] = byte(10 + len(n.Pods))
	p := &Pod{Node: n, Name: name, ContainerID: fmt.Sprintf("%s%s-%s", n.Lab.ID, n.Name, name), IP: netip.AddrFrom4(ip)}
	var podNS ns.NetNS
	var err error
	if p.NSName, podNS, err = n.podNS(name); err != nil {
		return nil, err
	}
	defer podNS.Close()
	p.Endpoint, err = podnet.Setup(podnet.Node{Handle: n.Handle, NS: n.NS},
		podnet.Config{RouterIP: datapath.RouterIP(n.PodCIDR), DeviceMTU: n.Lab.spec.MTU},
		podnet.Request{ContainerID: p.ContainerID, IfName: "eth0", PodNS: podNS, IP: p.IP})
	if err != nil {
		return nil, fmt.Errorf("wiring pod %s: %w", name, err)
	}
	return p, n.finishPod(p, p.Endpoint.LXCName)
}

// finishPod sizes the neighbour queues of the pod's pair and starts its
// echo responder.
func (n *Node) finishPod(p *Pod, lxc string) error {
	if err := nsutil.RunIn(p.Path(), func() error { return sysctls.WriteAll(nil, []nsutil.SysctlSet{NeighQueue("eth0")}) }); err != nil {
		return fmt.Errorf("pod %s sysctls: %w", p.Name, err)
	}
	if err := sysctls.WriteAll(n.NS, []nsutil.SysctlSet{NeighQueue(lxc)}); err != nil {
		return fmt.Errorf("node-side sysctls of %s: %w", p.Name, err)
	}
	echo, err := probe.StartEcho(p.Path(), p.EchoAddr())
	if err != nil {
		return fmt.Errorf("starting echo in %s: %w", p.Name, err)
	}
	p.echo = echo
	n.mu.Lock()
	n.Pods = append(n.Pods, p)
	n.mu.Unlock()
	return nil
}
