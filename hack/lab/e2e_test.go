package lab

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"golang.org/x/sys/unix"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/routemode/routemode/agent/endpoint"
	"github.com/routemode/routemode/agent/hostrouting"
	"github.com/routemode/routemode/agent/nsutil"
	"github.com/routemode/routemode/api/v1alpha1"
	"github.com/routemode/routemode/bpf"
	"github.com/routemode/routemode/internal/fwdcount"
	"github.com/routemode/routemode/internal/netlab"
	"github.com/routemode/routemode/internal/testenv"
)

// The end-to-end tests share one lab: the real API server, agents, operator
// and CNI plugin, 3 nodes, one pod per node.
var (
	e2e    *Lab
	e2eErr error
)

func TestMain(m *testing.M) {
	// As in cmd/routemode-lab: the lab's clients log nothing worth reading.
	ctrllog.SetLogger(logr.Discard())
	code := func() int {
		if os.Geteuid() != 0 {
			fmt.Fprintln(os.Stderr, "the end-to-end tests create network namespaces and load eBPF programs: run them as root")
			return 1
		}
		dir, err := os.MkdirTemp("", "routemode-e2e-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		root, err := testenv.RepoRoot()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		bin := filepath.Join(dir, "bin")
		build := exec.Command("go", "build", "-o", bin+"/", "./cmd/...")
		build.Dir, build.Stdout, build.Stderr = root, os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			fmt.Fprintln(os.Stderr, "building the binaries:", err)
			return 1
		}
		k8s := os.Getenv("KUBEBUILDER_ASSETS")
		if k8s == "" {
			k8s = filepath.Join(root, "bin", "k8s")
		}
		id := make([]byte, 2)
		_, _ = rand.Read(id)
		cfg := Config{Dir: filepath.Join(dir, "lab"), Nodes: 3, Prefix: "rme" + hex.EncodeToString(id) + "-", Bin: bin, K8sBin: k8s, Root: root}
		ctx := context.Background()
		e2e, e2eErr = Up(ctx, cfg)
		if e2eErr == nil {
			e2eErr = e2e.Bootstrap(ctx, filepath.Join(root, "config", "samples", "tunnel.yaml"))
		}
		code := m.Run()
		if code != 0 {
			// The lab's directory goes with it; its components' logs say
			// what they decided while a test failed.
			keep := dir + "-logs"
			if err := os.CopyFS(keep, os.DirFS(filepath.Join(cfg.Dir, "logs"))); err == nil {
				fmt.Fprintln(os.Stderr, "the lab's logs are kept in", keep)
			}
		}
		if err := Down(cfg.Dir); err != nil {
			fmt.Fprintln(os.Stderr, "removing the lab:", err)
			code = 1
		}
		if left := leftovers(cfg.Prefix); len(left) > 0 {
			fmt.Fprintln(os.Stderr, "the lab left behind:", left)
			code = 1
		}
		return code
	}()
	os.Exit(code)
}

// leftovers lists what a removed lab with prefix still has on the host:
// namespaces and bpffs pin directories.
func leftovers(prefix string) []string {
	var out []string
	for _, pattern := range []string{"/var/run/netns/" + prefix + "*", "/var/run/netns/rmhealth-" + prefix + "*", "/sys/fs/bpf/routemode/" + prefix + "*"} {
		m, _ := filepath.Glob(pattern)
		out = append(out, m...)
	}
	return out
}

// harness is one test's handle on the shared lab.
type harness struct {
	t *testing.T
	l *Lab
	c client.Client
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	if e2eErr != nil {
		t.Fatalf("the lab did not come up: %v", e2eErr)
	}
	c, err := e2e.Client()
	if err != nil {
		t.Fatal(err)
	}
	return &harness{t: t, l: e2e, c: c}
}

// spec writes a RoutingMode manifest and applies it with kubectl.
func (h *harness) apply(spec string) (string, error) {
	h.t.Helper()
	f := filepath.Join(h.t.TempDir(), "routingmode.yaml")
	manifest := "apiVersion: routemode.io/v1alpha1\nkind: RoutingMode\nmetadata:\n  name: default\nspec:\n" + spec
	if err := os.WriteFile(f, []byte(manifest), 0o600); err != nil {
		h.t.Fatal(err)
	}
	return h.l.Apply(f)
}

const (
	tunnelSpec = "  tunnel: vxlan\n  hostRouting: legacy\n"
	nativeSpec = "  tunnel: disabled\n  nativeRoutingCIDR: 10.0.0.0/16\n  autoDirectNodeRoutes: true\n  hostRouting: bpf\n"
)

// kstatusWatch records every kstatus the RoutingMode shows, in the order
// the API server sent them, until stopped.
type kstatusWatch struct {
	mu   sync.Mutex
	seen []status.Status
	// upTo maps every resourceVersion delivered to how many entries of seen
	// it and the events before it account for, so StopAt can cut the
	// sequence at the version another client read.
	upTo    map[string]int
	changed chan struct{}
	closed  bool
	stop    chan struct{}
	done    chan struct{}
	// halt ends the watch once, from StopAt or the test's cleanup.
	halt func()
}

// watch starts a watch of list's kind on the lab's API server.
func (h *harness) watch(ctx context.Context, list client.ObjectList) watch.Interface {
	h.t.Helper()
	wc, err := h.l.watchClient()
	if err != nil {
		h.t.Fatal(err)
	}
	w, err := wc.Watch(ctx, list)
	if err != nil {
		h.t.Fatal(err)
	}
	return w
}

// watchKstatus follows every change of the RoutingMode through a watch, so
// even a rollout faster than any polling interval shows its InProgress
// states (the spec change itself is one, until the operator observes it).
func (h *harness) watchKstatus() *kstatusWatch {
	h.t.Helper()
	w := &kstatusWatch{upTo: map[string]int{}, changed: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	w.halt = sync.OnceFunc(func() {
		close(w.stop)
		<-w.done
	})
	h.t.Cleanup(w.halt)
	watcher := h.watch(context.Background(), &v1alpha1.RoutingModeList{})
	go func() {
		defer close(w.done)
		defer watcher.Stop()
		defer w.notify(func() { w.closed = true })
		for {
			select {
			case <-w.stop:
				return
			case ev, ok := <-watcher.ResultChan():
				if !ok {
					return
				}
				rm, isRM := ev.Object.(*v1alpha1.RoutingMode)
				if !isRM {
					continue
				}
				u, _ := runtime.DefaultUnstructuredConverter.ToUnstructured(rm)
				res, err := status.Compute(&unstructured.Unstructured{Object: u})
				w.notify(func() {
					if err == nil && (len(w.seen) == 0 || w.seen[len(w.seen)-1] != res.Status) {
						w.seen = append(w.seen, res.Status)
					}
					w.upTo[rm.ResourceVersion] = len(w.seen)
				})
			}
		}
	}()
	return w
}

// notify changes the watch's record under its lock and wakes StopAt.
func (w *kstatusWatch) notify(change func()) {
	w.mu.Lock()
	change()
	w.mu.Unlock()
	select {
	case w.changed <- struct{}{}:
	default:
	}
}

// StopAt stops the watch once it has itself delivered the RoutingMode at
// resourceVersion rv, which another client read, and returns the sequence
// up to that version: it ends with the state that client saw, however far
// the watch ran behind it. Events come in order, so none can skip rv.
func (w *kstatusWatch) StopAt(rv string, limit time.Duration) ([]status.Status, error) {
	defer w.halt()
	timeout := time.After(limit)
	for {
		w.mu.Lock()
		n, ok := w.upTo[rv]
		seen, closed := slices.Clone(w.seen), w.closed
		w.mu.Unlock()
		switch {
		case ok:
			return seen[:n], nil
		case closed:
			return seen, fmt.Errorf("the watch closed before it delivered resourceVersion %s (it saw %v)", rv, seen)
		}
		select {
		case <-w.changed:
		case <-timeout:
			return seen, fmt.Errorf("the watch did not deliver resourceVersion %s within %s (it saw %v)", rv, limit, seen)
		}
	}
}

// rollout applies spec under traffic and checks nothing was lost.
func (h *harness) rollout(name, spec string, wantUnderlay func(CaptureSummary) bool) {
	h.t.Helper()
	ctx := context.Background()
	tr, err := h.l.StartTraffic(ctx, 600, 8472)
	if err != nil {
		h.t.Fatal(err)
	}
	w := h.watchKstatus()
	if out, err := h.apply(spec); err != nil {
		tr.Stop()
		h.t.Fatalf("%s: kubectl apply: %v\n%s", name, err, out)
	}
	rm, err := h.l.WaitRollout(ctx, h.c, 2*time.Minute, func(line string) { h.t.Logf("%s: %s", name, line) })
	if err != nil {
		tr.Stop()
		h.t.Fatalf("%s: %v", name, err)
	}
	seen, err := w.StopAt(rm.ResourceVersion, time.Minute)
	if err != nil {
		tr.Stop()
		h.t.Fatalf("%s: kstatus: %v", name, err)
	}
	sample, err := tr.Sample(ctx, 500, time.Minute)
	r := tr.Stop()
	if err != nil {
		h.t.Fatalf("%s: after the switch: %v", name, err)
	}
	after := summary(sample)
	h.t.Logf("%s: UDP %s; TCP %s; underlay after: %s; kstatus %v", name, r.UDP, r.TCP, after, seen)
	h.noLoss(name, r)
	if !wantUnderlay(after) {
		h.t.Errorf("%s: the underlay carried %s", name, after)
	}
	if !slices.Contains(seen, status.InProgressStatus) || seen[len(seen)-1] != status.CurrentStatus {
		h.t.Errorf("%s: kstatus went %v; want InProgress during and Current after", name, seen)
	}
	if rm.Status.Nodes.Updated != 3 || rm.Status.Nodes.Healthy != 3 {
		h.t.Errorf("%s: counts %+v", name, rm.Status.Nodes)
	}
}

func encapsulated(c CaptureSummary) bool { return c.Encapsulated > 0 && c.Plain == 0 }
func native(c CaptureSummary) bool       { return c.Plain > 0 && c.Encapsulated == 0 }

func TestE2ESwitchTunnelNativeTunnel(t *testing.T) {
	h := newHarness(t)
	h.rollout("tunnel→native+bpf", nativeSpec, native)
	out, err := run("ip", "netns", "exec", h.l.Nodes[0].NS, "ip", "route")
	if err != nil {
		t.Fatal(err)
	}
	if want := "10.0.1.0/24 via 192.168.0.130 dev eth0"; !strings.Contains(out, want) {
		t.Errorf("node-1's routes lack the seed's %q:\n%s", want, out)
	}
	// Each agent mirrored its two direct routes for the programs.
	for _, n := range h.l.Nodes {
		routes, err := hostrouting.ListDirectRoutes(hostrouting.DefaultPinDir(n.NS))
		if err != nil || len(routes) != len(h.l.Nodes)-1 {
			t.Errorf("%s's BPF direct routes: %v %v; want one per other node", n.NS, routes, err)
		}
	}
	// Nodes' own stacks reach pods on other nodes, as kube-proxy's
	// NodePorts (masqueraded to the node IP), host-network pods and the API
	// server do: the pods' answers go back through their node's stack.
	failed, err := h.l.NodeToPod(context.Background(), 100)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range failed {
		t.Errorf("native+bpf: %s", f)
	}
	h.agentsInNodeNamespaces()
	h.rollout("native+bpf→tunnel", tunnelSpec, encapsulated)
	h.agentsInNodeNamespaces()
	// Without host routing no program follows a direct route.
	for _, n := range h.l.Nodes {
		if routes, err := hostrouting.ListDirectRoutes(hostrouting.DefaultPinDir(n.NS)); err != nil || len(routes) != 0 {
			t.Errorf("%s's BPF direct routes after the switch to tunnel and legacy: %v %v; want none", n.NS, routes, err)
		}
	}
}

func TestE2EHostRoutingToggle(t *testing.T) {
	h := newHarness(t)
	h.rollout("tunnel legacy→bpf", "  tunnel: vxlan\n  hostRouting: bpf\n", encapsulated)
	before := h.redirected()
	tr, err := h.l.StartTraffic(context.Background(), 300, 8472)
	if err != nil {
		t.Fatal(err)
	}
	err = tr.Answered(context.Background(), 300, time.Minute)
	tr.Stop()
	if err != nil {
		t.Fatal(err)
	}
	// The programs, not the host stack, now forward the pods' packets.
	for node, n := range h.redirected() {
		if n <= before[node] {
			t.Errorf("%s's eBPF programs redirected no packet under traffic (%d before, %d after)", node, before[node], n)
		}
	}
	h.metricsListShowsRedirects(h.l.Nodes[0])
	h.agentExportsRedirects(h.l.Nodes[0])
	h.dashboardQueriesExportedMetrics(h.l.Nodes[0])
	h.newPodEntersEndpointMap(h.l.Nodes[0])
	h.rollout("tunnel bpf→legacy", tunnelSpec, encapsulated)
}

// agentExportsRedirects scrapes n's agent's metrics endpoint: the programs'
// counters must be there, with packets delivered with redirect_peer.
// agentsInNodeNamespaces checks, after the agents entered the health
// endpoint's and scratch namespaces during reconciles, that each agent
// process's network namespace (its main thread's, what `nsenter -t <pid>
// -n` enters) is still its node's.
func (h *harness) agentsInNodeNamespaces() {
	h.t.Helper()
	for _, n := range h.l.Nodes {
		pid, err := h.l.agentPID(n)
		if err != nil {
			h.t.Fatal(err)
		}
		var want, got unix.Stat_t
		if err := unix.Stat(filepath.Join("/var/run/netns", n.NS), &want); err != nil {
			h.t.Fatal(err)
		}
		if err := unix.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &got); err != nil {
			h.t.Fatal(err)
		}
		if got.Ino != want.Ino || got.Dev != want.Dev {
			link, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", pid))
			h.t.Errorf("%s's agent (pid %d) is in network namespace %s, not its node's (inode %d)", n.NS, pid, link, want.Ino)
		}
	}
}

func (h *harness) agentExportsRedirects(n Node) {
	h.t.Helper()
	body := h.scrape(filepath.Join("/var/run/netns", n.NS), AgentMetricsPort)
	for _, l := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(l, "routemode_hostrouting_packets_total{") && strings.Contains(l, `reason="redirect_peer"`) && !strings.HasSuffix(l, " 0") {
			h.t.Logf("%s's agent exports %s", n.NS, l)
			return
		}
	}
	h.t.Errorf("%s's agent exports no redirect_peer packets in routemode_hostrouting_packets_total:\n%s", n.NS, body)
}

// scrape reads /metrics at 127.0.0.1:port in the network namespace at
// nsPath ("" for the test's own).
func (h *harness) scrape(nsPath string, port int) []byte {
	h.t.Helper()
	var body []byte
	get := func() error {
		// Dialled here, the socket belongs to the namespace.
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), 5*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.WriteString(c, "GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n"); err != nil {
			return err
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body, err = io.ReadAll(resp.Body)
		return err
	}
	var err error
	if nsPath == "" {
		err = get()
	} else {
		err = nsutil.RunIn(nsPath, get)
	}
	if err != nil {
		h.t.Fatalf("scraping 127.0.0.1:%d in %q: %v", port, nsPath, err)
	}
	return body
}

// dashboardQueriesExportedMetrics reads every query of the Grafana
// dashboard shipped in config/grafana and fails for each metric it names
// that neither the real operator nor n's real agent exports, so a renamed
// or removed metric cannot leave a panel silently empty.
func (h *harness) dashboardQueriesExportedMetrics(n Node) {
	h.t.Helper()
	raw, err := os.ReadFile(filepath.Join(h.l.cfg.Root, "config", "grafana", "routemode-dashboard.json"))
	if err != nil {
		h.t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		h.t.Fatalf("the dashboard: %v", err)
	}
	exported := map[string]bool{}
	for _, body := range [][]byte{h.scrape("", h.l.state.OperatorMetricsPort), h.scrape(filepath.Join("/var/run/netns", n.NS), AgentMetricsPort)} {
		for _, l := range strings.Split(string(body), "\n") {
			if name, _, _ := strings.Cut(strings.TrimSpace(l), "{"); name != "" && !strings.HasPrefix(name, "#") {
				name, _, _ = strings.Cut(name, " ")
				exported[name] = true
			}
		}
	}
	metric := regexp.MustCompile(`\b(?:routemode|controller_runtime)_[a-z0-9_]+`)
	queried := 0
	for _, p := range dash.Panels {
		for _, t := range p.Targets {
			for _, m := range metric.FindAllString(t.Expr, -1) {
				queried++
				if !exported[m] {
					h.t.Errorf("dashboard panel %q queries %s, which neither the operator nor %s's agent exports", p.Title, m, n.NS)
				}
			}
		}
	}
	if queried == 0 {
		h.t.Errorf("the dashboard queries no routemode metric")
	}
	h.t.Logf("the dashboard's %d panels query %d metrics", len(dash.Panels), queried)
}

// metricsListShowsRedirects runs the real `routemodectl bpf metrics list`
// on n's pins: after traffic, it must report packets delivered with
// redirect_peer.
func (h *harness) metricsListShowsRedirects(n Node) {
	h.t.Helper()
	out, err := exec.Command(filepath.Join(h.l.cfg.Bin, "routemodectl"), "bpf", "metrics", "list",
		"--pin-dir", hostrouting.DefaultPinDir(n.NS), "-o", "json").Output()
	if err != nil {
		h.t.Fatalf("routemodectl bpf metrics list: %v: %s", err, out)
	}
	var rows []struct {
		Program, Verdict, Reason string
		Packets                  uint64
	}
	if err := json.Unmarshal(out, &rows); err != nil {
		h.t.Fatalf("routemodectl bpf metrics list -o json: %v: %s", err, out)
	}
	for _, r := range rows {
		if r.Reason == "redirect_peer" && r.Verdict == "redirect" && r.Packets > 0 {
			h.t.Logf("routemodectl bpf metrics list on %s: %s/%s %d packets (%d rows)", n.NS, r.Program, r.Reason, r.Packets, len(rows))
			return
		}
	}
	h.t.Errorf("routemodectl bpf metrics list on %s shows no redirect_peer packets: %s", n.NS, out)
}

// newPodEntersEndpointMap wires a pod on n while eBPF host routing is on and
// waits for it in n's endpoint map. Then it removes the pod's endpoint
// record and puts it back, which no link event accompanies: the entry must
// leave and return within 3 s, not at the agent's 10 s resync, because the
// agent watches the records. The pod is removed again with CNI DEL.
func (h *harness) newPodEntersEndpointMap(n Node) {
	h.t.Helper()
	ctx := context.Background()
	pod := h.l.cfg.Prefix + "late-pod"
	start := time.Now()
	ip, err := h.l.wirePod(ctx, n, pod)
	defer func() {
		if _, err := h.l.CNI(ctx, n, "DEL", pod); err != nil {
			h.t.Error(err)
		}
		if err := nsutil.Delete(pod); err != nil {
			h.t.Error(err)
		}
	}()
	if err != nil {
		h.t.Fatal(err)
	}
	inMap := func(want bool, what string) bool {
		h.t.Helper()
		from := time.Now()
		for {
			eps, err := hostrouting.ListEndpoints(hostrouting.DefaultPinDir(n.NS))
			if err != nil {
				h.t.Fatal(err)
			}
			if slices.ContainsFunc(eps, func(ep hostrouting.Endpoint) bool { return ep.IP == ip }) == want {
				h.t.Logf("%s: %v", what, time.Since(from).Round(time.Millisecond))
				return true
			}
			if time.Since(from) > 3*time.Second {
				h.t.Errorf("%s: not within 3s (pod %s, %s, node %s)", what, pod, ip, n.NS)
				return false
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	from := time.Since(start)
	if !inMap(true, fmt.Sprintf("a pod wired while bpf was on entered the endpoint map (its CNI ADD took %v)", from.Round(time.Millisecond))) {
		return
	}
	store := endpoint.Store{Dir: h.l.nodeDir(n, "state", "endpoints")}
	rec, ok, err := store.Get(pod, "eth0")
	if err != nil || !ok {
		h.t.Fatalf("the pod's endpoint record: %v %v", ok, err)
	}
	if err := store.Delete(pod, "eth0"); err != nil {
		h.t.Fatal(err)
	}
	if inMap(false, "its record removed, the entry left the map") {
		if err := store.Put(rec); err != nil {
			h.t.Fatal(err)
		}
		inMap(true, "its record back, the entry returned")
	}
}

// redirected sums every node's eBPF redirect counters.
func (h *harness) redirected() map[string]uint64 {
	h.t.Helper()
	out := map[string]uint64{}
	for _, n := range h.l.Nodes {
		cs, err := hostrouting.ReadCounters(hostrouting.DefaultPinDir(n.NS))
		if err != nil {
			h.t.Fatalf("reading %s's counters: %v", n.NS, err)
		}
		for _, c := range cs {
			if c.Verdict == bpf.VerdictRedirect {
				out[n.NS] += c.Packets
			}
		}
	}
	return out
}

// routingNodeGenerations records every RoutingNode's generation, to show a
// refused or halted change touched no node.
func (h *harness) routingNodeGenerations() map[string]int64 {
	h.t.Helper()
	var list v1alpha1.RoutingNodeList
	if err := h.c.List(context.Background(), &list); err != nil {
		h.t.Fatal(err)
	}
	out := map[string]int64{}
	for _, rn := range list.Items {
		out[rn.Name] = rn.Generation
	}
	return out
}

func TestE2EInvalidRoutingModeRefused(t *testing.T) {
	h := newHarness(t)
	before := h.routingNodeGenerations()
	out, err := h.apply("  tunnel: vxlan\n  autoDirectNodeRoutes: true\n")
	if err == nil {
		t.Fatalf("kubectl apply accepted autoDirectNodeRoutes with a tunnel: %s", out)
	}
	if !strings.Contains(err.Error(), "autoDirectNodeRoutes requires tunnel: disabled") {
		t.Errorf("refusal does not say why: %v", err)
	}
	if after := h.routingNodeGenerations(); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Errorf("routing nodes changed: %v -> %v", before, after)
	}
}

func TestE2EPreflightFailureTouchesNothing(t *testing.T) {
	h := newHarness(t)
	before := h.routingNodeGenerations()
	tr, err := h.l.StartTraffic(context.Background(), 300, 8472)
	if err != nil {
		t.Fatal(err)
	}
	// 10.0.0.0/24 holds node-1's podCIDR only.
	if out, err := h.apply("  tunnel: disabled\n  nativeRoutingCIDR: 10.0.0.0/24\n  autoDirectNodeRoutes: true\n"); err != nil {
		tr.Stop()
		t.Fatalf("%v\n%s", err, out)
	}
	_, err = h.l.WaitRollout(context.Background(), h.c, time.Minute, nil)
	if werr := tr.Answered(context.Background(), 300, time.Minute); werr != nil {
		t.Error(werr)
	}
	r := tr.Stop()
	if err == nil || !strings.Contains(err.Error(), "podCIDR 10.0.1.0/24 is outside nativeRoutingCIDR 10.0.0.0/24") {
		t.Errorf("rollout ended with %v; want a stall naming the podCIDR outside nativeRoutingCIDR", err)
	}
	if after := h.routingNodeGenerations(); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Errorf("routing nodes were touched: %v -> %v", before, after)
	}
	if r.UDP.Lost != 0 || r.TCP.Resets != 0 {
		t.Errorf("traffic was disturbed: UDP %s; TCP %s; by pair:\n%s", r.UDP, r.TCP, r.Troubled())
	}
	h.restore(tunnelSpec)
}

// restore applies spec and waits until the lab is back to it.
func (h *harness) restore(spec string) {
	h.t.Helper()
	if out, err := h.apply(spec); err != nil {
		h.t.Fatalf("%v\n%s", err, out)
	}
	if _, err := h.l.WaitRollout(context.Background(), h.c, 2*time.Minute, nil); err != nil {
		h.t.Fatalf("restoring %q: %v", spec, err)
	}
}

// A node whose switch makes it unhealthy is rolled back and the rollout
// halts. node-3's underlay drops pod-addressed packets that are not
// encapsulated, as a cloud's source/destination check does: VXLAN keeps
// working, so every node prepares and reports healthy, and the first node
// that switches to native routing cannot reach node-3. The fault shows
// only after a switch, whatever the machine's speed; a cut link would be
// seen by the agents' probes while the nodes prepare, and halt the rollout
// before any switch (the chaos suite's underlay-cut row).
func TestE2EUnhealthyNodeRolledBack(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	node3 := h.l.Nodes[2]
	drop, err := fwdcount.DropPlain(nsPath(node3.NS), netlab.UnderlayDev, node3.PodCIDR)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := drop.Remove(); err != nil {
			t.Error(err)
		}
		h.restore(tunnelSpec)
	})
	if out, err := h.apply(nativeSpec + "  rollout:\n    paused: true\n    healthCheckTimeout: 5s\n"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if err := wait(ctx, time.Minute, "the rollout to pause after preparing", func() (bool, error) {
		rm, _, err := h.l.RoutingMode(ctx, h.c)
		return err == nil && rm.Status.ObservedGeneration == rm.Generation && rm.Status.Phase == v1alpha1.PhasePaused, err
	}); err != nil {
		t.Fatal(err)
	}
	// Traffic between the nodes whose underlay carries everything.
	tr, err := h.l.StartTrafficWith(ctx, 300, 8472, TrafficOptions{Use: func(p PodState) bool { return p.Node != node3.NS }})
	if err != nil {
		t.Fatal(err)
	}
	if out, err := h.apply(nativeSpec + "  rollout:\n    paused: false\n    healthCheckTimeout: 5s\n"); err != nil {
		tr.Stop()
		t.Fatalf("%v\n%s", err, out)
	}
	rm, err := h.l.WaitRollout(ctx, h.c, time.Minute, func(line string) { t.Logf("%s", line) })
	if werr := tr.Answered(ctx, 300, time.Minute); werr != nil {
		t.Error(werr)
	}
	r := tr.Stop()
	if err == nil {
		t.Fatalf("the rollout finished though node-3's underlay drops native traffic")
	}
	stalled := meta.FindStatusCondition(rm.Status.Conditions, v1alpha1.ConditionStalled)
	if stalled == nil || stalled.Reason != "NodeFailed" || !strings.Contains(stalled.Message, "rolled back") {
		t.Errorf("Stalled = %+v; want NodeFailed with a rollback", stalled)
	}
	if n, err := drop.Packets(); err != nil || n == 0 {
		t.Errorf("node-3's underlay dropped %d native packets (%v): the rollback was not caused by the fault", n, err)
	}
	var rns v1alpha1.RoutingNodeList
	if err := h.c.List(ctx, &rns); err != nil {
		t.Fatal(err)
	}
	rolledBack := 0
	for _, rn := range rns.Items {
		if rn.Spec.Step == v1alpha1.StepRollback {
			rolledBack++
			if rn.Spec.Datapath.SendMode != v1alpha1.SendTunnel {
				t.Errorf("%s was rolled back to %s", rn.Name, rn.Spec.Datapath.SendMode)
			}
		}
	}
	if rolledBack != 1 {
		t.Errorf("%d nodes rolled back, want 1", rolledBack)
	}
	t.Logf("traffic between the other nodes: UDP %s; TCP %s", r.UDP, r.TCP)
	if r.UDP.Sent == 0 || r.UDP.Lost != 0 || r.TCP.Resets != 0 {
		t.Errorf("the other nodes lost traffic: UDP %s; TCP %s; by pair:\n%s", r.UDP, r.TCP, r.Troubled())
	}
}
