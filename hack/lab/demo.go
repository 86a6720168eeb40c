package lab

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/routemode/routemode/internal/probe"
)

// SwitchResult is one live switch as the demo measured it.
type SwitchResult struct {
	Name     string
	Duration time.Duration
	Traffic  TrafficReport
	// Before and After are the underlay captures over a quiet moment
	// before and after the switch.
	Before, After CaptureSummary
}

// CaptureSummary says how pod packets crossed the underlay.
type CaptureSummary struct {
	Encapsulated, Plain int64
}

func (c CaptureSummary) String() string {
	switch {
	case c.Encapsulated > 0 && c.Plain == 0:
		return fmt.Sprintf("VXLAN (%d encapsulated, 0 plain)", c.Encapsulated)
	case c.Plain > 0 && c.Encapsulated == 0:
		return fmt.Sprintf("native (0 encapsulated, %d plain)", c.Plain)
	}
	return fmt.Sprintf("mixed (%d encapsulated, %d plain)", c.Encapsulated, c.Plain)
}

// Demo is `make demo`: a lab switched live from VXLAN to native routing
// with eBPF host routing and back while traffic flows, narrated on out.
type Demo struct {
	Lab  *Lab
	Out  io.Writer
	Rate int
	// Window is how long traffic is watched before and after a switch.
	Window time.Duration
	c      client.Client
}

func (d *Demo) say(format string, args ...any) {
	fmt.Fprintf(d.Out, format+"\n", args...)
}

func (d *Demo) sayCmd(name string, out string) {
	d.say("$ %s", name)
	for _, line := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
		d.say("  %s", line)
	}
}

func (d *Demo) kubectl(args ...string) error {
	out, err := d.Lab.Kubectl(args...)
	d.sayCmd("kubectl "+strings.Join(args, " "), out)
	return err
}

func (d *Demo) nodeCmd(node string, args ...string) {
	out, err := run("ip", append([]string{"netns", "exec", node}, args...)...)
	if err != nil {
		out += err.Error()
	}
	d.sayCmd("ip netns exec "+node+" "+strings.Join(args, " "), out)
}

// sample is a path under config/samples.
func (d *Demo) sample(name string) string {
	return filepath.Join(d.Lab.cfg.Root, "config", "samples", name)
}

// Run runs the demo on a lab that is up.
func (d *Demo) Run(ctx context.Context) ([]SwitchResult, error) {
	var err error
	if d.c, err = d.Lab.Client(); err != nil {
		return nil, err
	}
	d.say("\n== 1. VXLAN tunnelling, legacy host routing ==")
	if err := d.kubectl("apply", "-f", d.sample("tunnel.yaml")); err != nil {
		return nil, err
	}
	if d.Lab.Real() {
		d.say("Waiting for the agent DaemonSet and the operator Deployment to roll out, then for the RoutingMode to be Ready...")
	}
	if err := d.Lab.waitFirstRollout(ctx, d.c); err != nil {
		return nil, err
	}
	if err := d.Lab.AddPods(ctx); err != nil {
		return nil, err
	}
	if err := d.kubectl("get", "routingmode,routingnodes"); err != nil {
		return nil, err
	}
	if d.Lab.Real() {
		if err := d.kubectl("get", "pods", "-A", "-o", "wide"); err != nil {
			return nil, err
		}
		e := d.Lab.state.Echo
		d.say("\nService traffic: %s on %s requests the ClusterIP %s (Service %s) %d times a second, each on a new connection,",
			e.Client.Name, e.Client.Node, e.ServiceIP, EchoDeployment, echoRate)
		d.say("through kube-proxy's rules to the %s pods on the other nodes.", EchoDeployment)
	} else {
		d.say("\nPods (named network namespaces, wired by routemode-cni):")
		for _, p := range d.Lab.Pods() {
			d.say("  %-8s on %-7s %s", p.Name, p.Node, p.IP)
		}
	}
	node1 := d.Lab.Nodes[0].NS
	d.nodeCmd(node1, "ip", "route")
	if err := d.showMonitor(ctx, node1, "(the seed's cilium monitor -vv; legacy host routing leaves every packet to-stack, the kernel's routing and netfilter)", monitorEvents); err != nil {
		return nil, err
	}

	var results []SwitchResult
	for _, sw := range []struct{ name, sample, explain string }{
		{"VXLAN → native + eBPF host routing", "native-routing.yaml", "tunnel: disabled, nativeRoutingCIDR: 10.0.0.0/16, autoDirectNodeRoutes: true, hostRouting: bpf"},
		{"native + eBPF host routing → VXLAN", "tunnel.yaml", "tunnel: vxlan, hostRouting: legacy"},
	} {
		d.say("\n== %d. Switch live: %s ==", len(results)+2, sw.name)
		r, err := d.switchTo(ctx, sw.name, sw.sample, sw.explain)
		if err != nil {
			return results, err
		}
		results = append(results, r)
		if err := d.kubectl("get", "routingmode,routingnodes"); err != nil {
			return results, err
		}
		d.nodeCmd(node1, "ip", "route")
		if len(results) == 1 {
			d.showEndpoints(node1)
			if err := d.showMonitor(ctx, node1, "(eBPF host routing: to-network straight out of the pod, to-endpoint straight into it)", monitorEvents); err != nil {
				return results, err
			}
		}
	}
	d.say("\n== Summary ==")
	d.table(results)
	return results, nil
}

func (d *Demo) showEndpoints(node string) {
	d.routemodectl(node, "(the seed's `cilium bpf endpoint list`)", "bpf", "endpoint", "list", "--node", node)
	d.routemodectl(node, "(the direct routes the programs follow without a FIB lookup)", "bpf", "route", "list", "--node", node)
	d.routemodectl(node, "(what the programs did with the packets so far)", "bpf", "metrics", "list", "--node", node)
}

// routemodectl runs routemodectl on node and shows it.
func (d *Demo) routemodectl(node, note string, args ...string) {
	out, err := d.routemodectlCmd(context.Background(), node, args...).CombinedOutput()
	if err != nil {
		out = append(out, []byte(err.Error())...)
	}
	d.sayCmd("routemodectl "+strings.Join(args, " ")+"   "+note, string(out))
}

// routemodectlCmd is routemodectl in node's network namespace; on a real
// node also in its mount namespace, whose bpffs holds the pins.
func (d *Demo) routemodectlCmd(ctx context.Context, node string, args ...string) *exec.Cmd {
	ctl := filepath.Join(d.Lab.cfg.Bin, "routemodectl")
	enter := []string{"--net=" + nsPath(node)}
	if i := slices.IndexFunc(d.Lab.Nodes, func(n Node) bool { return n.NS == node }); d.Lab.Real() && i >= 0 {
		enter = []string{"-t", strconv.Itoa(d.Lab.nodePID(i)), "-n", "-m"}
	}
	return exec.CommandContext(ctx, "nsenter", append(append(enter, "--", ctl), args...)...)
}

// monitorEvents is how many packets' events the demo's monitors show:
// enough for both directions of a probe and its answer.
const monitorEvents = 4

// showMonitor shows the path of a few packets between node and a pod on
// another node, as the seed shows a ping's with `cilium monitor -vv`: it
// runs `routemodectl monitor -vv` on node while probes flow, and ends it
// with Ctrl-C (SIGINT, which turns the events off again) once it printed
// events packets.
func (d *Demo) showMonitor(ctx context.Context, node, note string, events int) error {
	peer := slices.IndexFunc(d.Lab.Pods(), func(p PodState) bool { return p.Node != node })
	if peer < 0 {
		return fmt.Errorf("no pod on a node other than %s to watch", node)
	}
	ip := d.Lab.Pods()[peer].IP.String()
	args := []string{"monitor", "--node", node, "-vv", "--related-to", ip}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	cmd := d.routemodectlCmd(ctx, node, args...)
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = 10 * time.Second
	var stderr strings.Builder
	out := &eventLines{want: events, enough: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = out, &stderr
	if err := cmd.Start(); err != nil {
		return err
	}
	t, err := d.Lab.StartTraffic(ctx, 20, 8472)
	if err != nil {
		cancel()
		_ = cmd.Wait()
		return err
	}
	select {
	case <-out.enough:
	case <-ctx.Done():
	}
	t.Stop()
	cancel()
	werr := cmd.Wait()
	lines, seen := out.result()
	d.sayCmd("routemodectl "+strings.Join(args, " ")+"   "+note, strings.Join(lines, "\n")+"\n^C")
	if seen < events {
		return fmt.Errorf("routemodectl monitor on %s showed %d of %d events within a minute (%v): %s", node, seen, events, werr, stderr.String())
	}
	return nil
}

// switchTo applies a sample while traffic flows and reports what the
// traffic and the underlay captures saw.
func (d *Demo) switchTo(ctx context.Context, name, sample, explain string) (SwitchResult, error) {
	r := SwitchResult{Name: name}
	t, err := d.Lab.StartTraffic(ctx, d.Rate, 8472)
	if err != nil {
		return r, err
	}
	d.say("Traffic on: a UDP probe stream (%d probes/s in all) and a TCP connection between each of %d pod pairs on different nodes.", d.Rate, len(d.Lab.podPairs(func(PodState) bool { return true })))
	t.Capture()
	time.Sleep(d.Window)
	r.Before = summary(t.Capture())
	d.say("Underlay before: %s", r.Before)
	d.say("Applying %s (%s), no delete first:", sample, explain)
	start := time.Now()
	if err := d.kubectl("apply", "-f", d.sample(sample)); err != nil {
		t.Stop()
		return r, err
	}
	d.say("Waiting for Ready, as `kubectl wait --for=condition=Ready routingmode/default` would; the rollout as it changes")
	d.say("(phase, nodes updated/total, then per node: its step → how its agent reports it sends / forwards, and whether its probes reach every peer):")
	_, err = d.Lab.WaitRollout(ctx, d.c, 5*time.Minute, func(line string) {
		d.say("  +%5.1fs %s", time.Since(start).Seconds(), line)
	})
	r.Duration = time.Since(start)
	if err != nil {
		t.Stop()
		return r, err
	}
	t.Capture()
	time.Sleep(d.Window)
	r.After = summary(t.Capture())
	r.Traffic = t.Stop()
	d.say("Underlay after: %s", r.After)
	d.say("Traffic during the switch: UDP %s; TCP %s", r.Traffic.UDP, r.Traffic.TCP)
	if s := r.Traffic.Service; s != nil {
		d.say("Service requests during the switch: %s", s.Window)
		if s.Err != nil {
			return r, s.Err
		}
	}
	return r, nil
}

func summary(s probe.CaptureStats) CaptureSummary {
	return CaptureSummary{Encapsulated: s.Encapsulated, Plain: s.Plain}
}

func (d *Demo) table(results []SwitchResult) {
	w := tabwriter.NewWriter(d.Out, 0, 0, 2, ' ', 0)
	service := d.Lab.state.Echo != nil
	head := "Switch\tDuration\tProbes sent\tLost\tDuplicated\tLargest gap (when)\tTCP conns\tTCP resets"
	if service {
		head += "\tService requests\tFailed"
	}
	fmt.Fprintln(w, head+"\tUnderlay before\tUnderlay after")
	for _, r := range results {
		fmt.Fprintf(w, "%s\t%.1fs\t%d\t%d\t%d\t%s (%.1fs)\t%d\t%d", r.Name, r.Duration.Seconds(), r.Traffic.UDP.Sent, r.Traffic.UDP.Lost,
			r.Traffic.UDP.Duplicates, r.Traffic.UDP.LargestGap.Round(100*time.Microsecond), r.Traffic.UDP.LargestGapAt.Seconds(),
			r.Traffic.Pairs, r.Traffic.TCP.Resets)
		if s := r.Traffic.Service; service && s != nil {
			fmt.Fprintf(w, "\t%d\t%d", s.Sent, s.Failed)
		}
		fmt.Fprintf(w, "\t%s\t%s\n", r.Before, r.After)
	}
	w.Flush()
	fmt.Fprintf(d.Out, "Each switch began %s after its traffic started; the largest gap between two answers on any stream, and when it began, is in the table.\n", d.Window)
}

// eventLines keeps the monitor's output up to its want-th event, each
// event ending with its "CPU nn:" line, and closes enough then.
type eventLines struct {
	mu      sync.Mutex
	partial []byte
	lines   []string
	seen    int
	want    int
	enough  chan struct{}
}

func (e *eventLines) Write(p []byte) (int, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.partial = append(e.partial, p...)
	for e.seen < e.want {
		i := bytes.IndexByte(e.partial, '\n')
		if i < 0 {
			break
		}
		line := string(e.partial[:i])
		e.partial = e.partial[i+1:]
		e.lines = append(e.lines, line)
		if strings.HasPrefix(line, "CPU ") {
			if e.seen++; e.seen == e.want {
				close(e.enough)
			}
		}
	}
	return len(p), nil
}

func (e *eventLines) result() ([]string, int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.lines, e.seen
}
