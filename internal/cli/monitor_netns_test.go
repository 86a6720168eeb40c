//go:build linux

package cli

import (
	"bufio"
	"context"
	"io"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/routemode/routemode/agent/bpfhost"
	"github.com/routemode/routemode/agent/datapath"
	"github.com/routemode/routemode/agent/hostrouting"
	"github.com/routemode/routemode/api/v1alpha1"
	"github.com/routemode/routemode/internal/netlab"
	"github.com/routemode/routemode/internal/privileged"
)

// The real command on a lab node in native routing with eBPF host
// routing: a UDP probe from a pod on node 1 to a pod on node 2 shows as
// to-endpoint on node 2, with the headers decoded. Its output is logged:
// docs/monitor.md quotes it.
func TestMonitorCommandOnLab(t *testing.T) {
	privileged.Require(t, "loads BPF programs into network namespaces")
	if caps := hostrouting.Probe(); !caps.BPFHostRouting {
		privileged.Unavailable(t, "eBPF host routing: "+caps.Reason)
	}
	lab := netlab.New(t, netlab.Spec{Underlay: netlab.PointToPoint})
	pinRoot, err := lab.RecordDir(filepath.Join(hostrouting.BPFFSRoot, "routemode-test", lab.ID))
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range lab.Nodes {
		if _, err := n.AddPodDirect("p1"); err != nil {
			t.Fatal(err)
		}
		routes, err := n.ApplyDatapath(t.Context(), netlab.Native)
		if err != nil {
			t.Fatal(err)
		}
		cfg := hostrouting.Config{
			Underlay: netlab.UnderlayDev, TunnelDevice: datapath.TunnelDevice, NativeRoutingCIDR: netlab.PodPrefix,
			PinDir: filepath.Join(pinRoot, n.Name), DirectRoutes: bpfhost.DirectRoutes(routes, netlab.UnderlayDev, netlab.PodPrefix),
		}
		m := hostrouting.NewManager(hostrouting.Options{Handle: n.Handle, NetNS: n.Path()})
		// Runs before the lab's own cleanup (LIFO), while the namespaces exist.
		t.Cleanup(func() {
			if err := m.Remove(cfg.PinDir); err != nil {
				t.Errorf("remove %s: %v", cfg.PinDir, err)
			}
			m.Close()
		})
		if _, err := m.Apply(t.Context(), v1alpha1.HostRoutingBPF, cfg, bpfhost.Endpoints(n.Endpoints())); err != nil {
			t.Fatal(err)
		}
	}
	n2 := lab.Nodes[1]
	p1, p2 := lab.Nodes[0].Pods[0], n2.Pods[0]

	// The command runs in the test's namespace: name interfaces in the
	// node's, as nsenter into the node would.
	d := defaultDeps()
	d.ifName = func(i int) (string, error) {
		l, err := n2.Handle.LinkByIndex(i)
		if err != nil {
			return "", err
		}
		return l.Attrs().Name, nil
	}
	ctx, cancel := context.WithCancel(t.Context())
	pr, pw := io.Pipe()
	errOut := &strings.Builder{}
	done := make(chan error, 1)
	go func() {
		cmd := NewRootCommand(Streams{In: strings.NewReader(""), Out: pw, ErrOut: errOut}, d)
		cmd.SetArgs([]string{"monitor", "--pin-dir", filepath.Join(pinRoot, n2.Name), "-vv", "--related-to", p1.IP.String()})
		err := cmd.ExecuteContext(ctx)
		pw.Close()
		done <- err
	}()
	// Ctrl-C: the command ends; its last writes are drained so that it
	// never blocks on the pipe.
	stop := sync.OnceValue(func() error {
		cancel()
		go func() { _, _ = io.Copy(io.Discard, pr) }()
		return <-done
	})
	t.Cleanup(func() { _ = stop() })

	// Probe until the receiving node's to-endpoint line for it shows up:
	// probes sent before the monitor set its flag make no event, so keep
	// sending while waiting.
	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			select {
			case lines <- sc.Text():
			case <-ctx.Done():
				return
			}
		}
	}()
	want := "to-endpoint: "
	var out []string
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(30 * time.Second)
	for found := false; !found; {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("monitor ended; stderr %q; output so far:\n%s", errOut, strings.Join(out, "\n"))
			}
			out = append(out, l)
			found = strings.Contains(l, want)
		case <-tick.C:
			if _, err := p1.Ping(t.Context(), p2.EchoAddr(), 64, false); err != nil {
				t.Fatal(err)
			}
		case <-deadline:
			t.Fatalf("no %q line within 30 s; stderr %q; output so far:\n%s", want, errOut, strings.Join(out, "\n"))
		}
	}
	if err := stop(); err != nil {
		t.Fatalf("monitor: %v", err)
	}
	text := strings.Join(out, "\n")
	t.Logf("routemodectl monitor -vv --related-to %s on %s:\n%s", p1.IP, n2.Name, text)
	last := out[len(out)-1]
	for _, w := range []string{
		"FROM " + strconv.Itoa(int(p2.Endpoint.ID)) + " to-endpoint: 106 bytes, interface " + p2.Endpoint.LXCName,
		"orig-ip " + p1.IP.String(), "to endpoint " + strconv.Itoa(int(p2.Endpoint.ID)), "program from-netdev, in eth0",
	} {
		if !strings.Contains(last, w) {
			t.Errorf("line %q lacks %q", last, w)
		}
	}
	mustContain(t, "-vv output", "\n"+text, "\nEthernet\t{", "\nIPv4\t{", "SrcIP="+p1.IP.String()+" DstIP="+p2.IP.String(), "\nUDP\t{", "DstPort=")
}
