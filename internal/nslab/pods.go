package nslab

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/routemode/routemode/agent/cniconf"
	"github.com/routemode/routemode/agent/nsutil"
	"github.com/routemode/routemode/internal/probe"
)

// EchoPort is the UDP port every pod's echo responder listens on.
const EchoPort = 7000

// Pod is a pod namespace wired by the CNI plugin.
type Pod struct {
	Node        *Node
	Name        string
	NSName      string
	ContainerID string
	IP          netip.Addr
	Result      *current.Result
	echo        *probe.Echo
}

// Path is the pod namespace's path.
func (p *Pod) Path() string { return nsutil.NamedPath(p.NSName) }

// EchoAddr is the pod's echo responder.
func (p *Pod) EchoAddr() netip.AddrPort { return netip.AddrPortFrom(p.IP, EchoPort) }

// CNIResult is one plugin run.
type CNIResult struct {
	Stdout, Stderr []byte
	ExitCode       int
}

// CNI runs the plugin binary in the node's namespace (`ip netns exec`),
// as a container runtime would, with stdin as the network configuration.
func (n *Node) CNI(ctx context.Context, command, containerID, netnsPath, ifName string, stdin []byte) CNIResult {
	n.Lab.T.Helper()
	if n.Lab.CNIBin == "" {
		n.Lab.T.Fatal("lab built without the CNI plugin")
	}
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", n.NSName, filepath.Join(n.Lab.CNIBin, "routemode-cni"))
	cmd.Env = []string{
		"CNI_COMMAND=" + command,
		"CNI_CONTAINERID=" + containerID,
		"CNI_NETNS=" + netnsPath,
		"CNI_IFNAME=" + ifName,
		"CNI_PATH=" + n.Lab.CNIBin,
		"PATH=" + os.Getenv("PATH"),
	}
	cmd.Stdin = bytes.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	res := CNIResult{Stdout: out.Bytes(), Stderr: errb.Bytes()}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		res.ExitCode = ee.ExitCode()
	} else if err != nil {
		n.Lab.T.Fatalf("running the CNI plugin: %v", err)
	}
	return res
}

// PluginStdin is the network configuration the node's agent wrote, as a
// runtime hands it to the plugin.
func (n *Node) PluginStdin() []byte {
	n.Lab.T.Helper()
	b, err := os.ReadFile(filepath.Join(n.CNIConfDir, cniconf.FileName))
	if err != nil {
		n.Lab.T.Fatalf("reading the CNI configuration the agent wrote: %v", err)
	}
	stdin, err := cniconf.PluginStdin(b)
	if err != nil {
		n.Lab.T.Fatal(err)
	}
	return stdin
}

// NewPodNS creates an empty pod namespace.
func (n *Node) NewPodNS(name string) string {
	n.Lab.T.Helper()
	nsName := fmt.Sprintf("%s-n%d-%s", n.Lab.ID, n.Index, name)
	p, err := nsutil.Create(nsName)
	if err != nil {
		n.Lab.T.Fatalf("creating pod namespace: %v", err)
	}
	p.Close()
	return nsName
}

// AddPod creates a pod namespace and wires it with CNI ADD using the
// configuration the agent wrote (so the agent must have reconciled), and
// starts a UDP echo responder in it.
func (n *Node) AddPod(ctx context.Context, name string) *Pod {
	n.Lab.T.Helper()
	p := &Pod{Node: n, Name: name, ContainerID: fmt.Sprintf("%s-%s-%s", n.Lab.ID, n.Name, name)}
	p.NSName = n.NewPodNS(name)
	res := n.CNI(ctx, "ADD", p.ContainerID, p.Path(), "eth0", n.PluginStdin())
	if res.ExitCode != 0 {
		n.Lab.T.Fatalf("CNI ADD of %s failed (exit %d): %s %s", name, res.ExitCode, res.Stdout, res.Stderr)
	}
	var r current.Result
	if err := json.Unmarshal(res.Stdout, &r); err != nil {
		n.Lab.T.Fatalf("CNI ADD result of %s: %v: %s", name, err, res.Stdout)
	}
	if len(r.IPs) != 1 {
		n.Lab.T.Fatalf("CNI ADD result of %s has %d IPs", name, len(r.IPs))
	}
	p.Result = &r
	p.IP, _ = netip.AddrFromSlice(r.IPs[0].Address.IP.To4())
	if err := probe.InNS(p.Path(), func() error { return (nsutil.Sysctls{}).WriteAll(nil, []nsutil.SysctlSet{NeighQueue("eth0")}) }); err != nil {
		n.Lab.T.Fatalf("pod %s sysctls: %v", name, err)
	}
	if len(r.Interfaces) > 0 {
		if err := (nsutil.Sysctls{}).WriteAll(n.NS, []nsutil.SysctlSet{NeighQueue(r.Interfaces[0].Name)}); err != nil {
			n.Lab.T.Fatalf("node-side sysctls of %s: %v", name, err)
		}
	}
	echo, err := probe.StartEcho(p.Path(), p.EchoAddr())
	if err != nil {
		n.Lab.T.Fatalf("starting echo in %s: %v", name, err)
	}
	p.echo = echo
	n.Lab.T.Cleanup(func() { echo.Close() })
	n.mu.Lock()
	n.Pods = append(n.Pods, p)
	n.mu.Unlock()
	return p
}

// Ping sends one probe from p to target and waits for the answer.
func (p *Pod) Ping(ctx context.Context, target netip.AddrPort, size int, dontFragment bool) (time.Duration, error) {
	return probe.PingOnce(ctx, p.Path(), target, size, dontFragment, time.Second)
}
