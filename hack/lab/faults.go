package lab

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"github.com/routemode/routemode/agent/datapath"
	"github.com/routemode/routemode/agent/health"
	"github.com/routemode/routemode/agent/hostrouting"
	"github.com/routemode/routemode/agent/masq"
	"github.com/routemode/routemode/agent/podnet"
	"github.com/routemode/routemode/internal/netlab"
)

// The faults the chaos suites inject in the lab's underlay and in its
// nodes' kernels, the same on the netns lab's nodes and on real ones.

// SetUnderlay sets node's port on the underlay bridge up or down: down,
// the node reaches no peer and no peer reaches it, as with a cut cable.
func (l *Lab) SetUnderlay(node string, up bool) error {
	i, err := l.nodeIndex(node)
	if err != nil {
		return err
	}
	state := "down"
	if up {
		state = "up"
	}
	_, err = run("ip", "-n", l.state.Underlay, "link", "set", netlab.BridgePort(i+1), state)
	return err
}

// lossTable is the nftables table of the injected random loss, in the
// underlay's namespace.
const lossTable = "rmchaos"

// StartRandomLoss drops percent of the frames crossing the underlay
// bridge, at random: every node's underlay, both ways. The rule sits on
// the bridge, not in the nodes: with eBPF host routing the programs
// redirect pods' packets at tc, before any netfilter hook of the node.
func (l *Lab) StartRandomLoss(percent int) error {
	rules := fmt.Sprintf("table bridge %s {\n chain forward {\n  type filter hook forward priority 0; policy accept;\n  numgen random mod 100 < %d counter drop\n }\n}\n", lossTable, percent)
	f, err := os.CreateTemp("", "routemode-loss-*.nft")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := f.WriteString(rules); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	_, err = run("ip", "netns", "exec", l.state.Underlay, "nft", "-f", f.Name())
	return err
}

// StopRandomLoss removes the random loss, if it is there.
func (l *Lab) StopRandomLoss() error {
	out, err := run("ip", "netns", "exec", l.state.Underlay, "nft", "delete", "table", "bridge", lossTable)
	if err != nil && !strings.Contains(out, "No such file or directory") {
		return err
	}
	return nil
}

var counterPackets = regexp.MustCompile(`counter packets (\d+)`)

// RandomLossDropped is what the random loss dropped so far.
func (l *Lab) RandomLossDropped() (int64, error) {
	out, err := run("ip", "netns", "exec", l.state.Underlay, "nft", "list", "table", "bridge", lossTable)
	if err != nil {
		return 0, err
	}
	m := counterPackets.FindStringSubmatch(out)
	if m == nil {
		return 0, fmt.Errorf("no counter in the loss table:\n%s", out)
	}
	return strconv.ParseInt(m[1], 10, 64)
}

// WipeNodeKernel removes from node's network namespace everything its
// agent made, as a reboot would (its routes, the VXLAN device, rm_host and
// rm_net, the masquerading table, the eBPF programs with their pins), and
// sets rp_filter back to strict, as distributions boot it. The agent must
// not run meanwhile (stopped, or held with SIGSTOP), or it would put it
// all back.
//
// The pods' own routes stay: the CNI plugin made them with the pods, which
// a real reboot takes down and the kubelet wires afresh. The health
// endpoint's route is the agent's.
func (l *Lab) WipeNodeKernel(node string) error {
	i, err := l.nodeIndex(node)
	if err != nil {
		return err
	}
	n := l.Nodes[i]
	var errs []error
	try := func(out string, err error) {
		if err != nil && !strings.Contains(out, "Cannot find device") && !strings.Contains(out, "No such file or directory") {
			errs = append(errs, err)
		}
	}
	try(run("ip", "-n", n.NS, "route", "flush", "proto", strconv.Itoa(datapath.RouteProtocol)))
	try(run("ip", "-n", n.NS, "route", "flush", "dev", health.LXCName, "proto", strconv.Itoa(int(podnet.RouteProtocol))))
	try(run("ip", "-n", n.NS, "link", "del", datapath.TunnelDevice))
	// rm_host and its peer, with the pods' gateway address.
	try(run("ip", "-n", n.NS, "link", "del", datapath.HostDevice))
	try(run("ip", "netns", "exec", n.NS, "nft", "delete", "table", "ip", masq.Table))
	// With no agent holding them, unpinned links detach their programs. A
	// real node's agent pins on the node's own bpffs, the netns lab's on
	// the host's.
	pins := hostrouting.DefaultPinDir(n.Name)
	if l.Real() {
		pins = filepath.Join(l.NodeRoot(i), pins)
	}
	if err := os.RemoveAll(pins); err != nil {
		errs = append(errs, err)
	}
	try(run("ip", "netns", "exec", n.NS, "sysctl", "-qw", "net.ipv4.conf.all.rp_filter=1", "net.ipv4.conf.eth0.rp_filter=1"))
	return errors.Join(errs...)
}

// LostOutside sums the probe loss of the pairs whose pods are both off
// node: the loss a fault of that node must not cause.
func (l *Lab) LostOutside(r TrafficReport, node string) int64 {
	onNode := map[string]bool{}
	for _, p := range l.Pods() {
		onNode[p.Name] = p.Node == node
	}
	var n int64
	for key, st := range r.ByPair {
		src, dst, _ := strings.Cut(key, "->")
		if !onNode[src] && !onNode[dst] {
			n += st.Lost
		}
	}
	return n
}
