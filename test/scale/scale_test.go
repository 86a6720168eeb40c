// Package scale benchmarks routemode's control plane at cluster sizes of
// 100, 1,000 and 5,000 nodes against a real kube-apiserver and etcd
// (bin/k8s): N Node objects with podCIDRs and InternalIPs, the real
// operator binary as its own process (so its RSS and CPU are its own), and
// N simulated agents in this process that report status the way the real
// agent does. It measures today's design and the design before issue 15
// (oldCommit: per-peer status, full caches) the same way, side by side.
// make bench-scale runs it; RESULTS.md holds the figures. agent_test.go and
// sweep_test.go measure one node's agent in a network namespace (make
// bench-agent).
package scale

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"iter"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/routemode/routemode/api/v1alpha1"
	rmscheme "github.com/routemode/routemode/internal/scheme"
	"github.com/routemode/routemode/internal/testenv"
)

// design is one version of routemode: its CRDs, its operator binary and
// how its agents write their status.
type design struct {
	name, crdDir, operator, agent string
	// pprof is whether its operator has --pprof-bind-address.
	pprof bool
	// operatorArgs are flags its operator needs besides the common ones.
	operatorArgs []string
	// peers is the status fragment about peers for a node of an n-node
	// cluster whose peers all answer.
	peers func(self, n int) map[string]any
}

// The API server and etcd that envtest starts log through controller-runtime's
// logger; their lines are not the benchmark's output.
func init() { ctrllog.SetLogger(logr.Discard()) }

func nodeName(i int) string { return fmt.Sprintf("node-%04d", i) }
func nodeIP(i int) string   { return fmt.Sprintf("192.168.%d.%d", i/250, i%250+1) }
func podCIDR(i int) string  { return fmt.Sprintf("10.%d.%d.0/24", i/256, i%256) }

// newDesign reports peers as counts, as the agent's peertable.Summarize does
// when every peer is direct and answers.
func newDesign(root string) design {
	return design{name: "new", crdDir: filepath.Join(root, "config", "crd", "bases"), operator: build(root, "new", "operator"), agent: build(root, "new", "agent"), pprof: true,
		// Plain HTTP, so the benchmark reads the reconcile histogram and the
		// client's request counts without a token.
		operatorArgs: []string{"--metrics-secure=false"},
		peers: func(_, n int) map[string]any {
			return map[string]any{"peerSummary": map[string]any{"total": n - 1, "probed": n - 1}}
		}}
}

// oldCommit is main before issue 15's change: the "old" design.
const oldCommit = "2251e90"

// oldDesign is the tree at oldCommit: one status.peers entry per peer, with
// its round trip, as that agent wrote it.
func oldDesign(root string) (design, error) {
	dir := filepath.Join(root, "bin", "scale-old")
	if err := os.RemoveAll(dir); err != nil {
		return design{}, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return design{}, err
	}
	archive := exec.Command("sh", "-c", fmt.Sprintf("git -C %s archive %s | tar -x -C %s", root, oldCommit, dir))
	if out, err := archive.CombinedOutput(); err != nil {
		return design{}, fmt.Errorf("extracting the old design (%s): %v: %s", oldCommit, err, out)
	}
	return design{name: "old", crdDir: filepath.Join(dir, "config", "crd", "bases"), operator: build(dir, "old", "operator"), agent: build(dir, "old", "agent"),
		peers: func(self, n int) map[string]any {
			peers := make([]map[string]any, 0, n-1)
			for i := range n {
				if i != self {
					peers = append(peers, map[string]any{"node": nodeName(i), "nodeIP": nodeIP(i), "direct": true, "reachable": true, "rttMicroseconds": 400 + (self+i)%97})
				}
			}
			return map[string]any{"peers": peers}
		}}, nil
}

// build compiles the operator or agent of the tree at dir; "" when it
// fails, which the benchmark reports.
func build(dir, name, what string) string {
	out := filepath.Join(os.TempDir(), "routemode-scale-"+what+"-"+name)
	cmd := exec.Command("go", "build", "-o", out, "./cmd/routemode-"+what)
	cmd.Dir = dir
	if b, err := cmd.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building the %s %s: %v: %s\n", name, what, err, b)
		return ""
	}
	return out
}

// figures is one run's measurements.
type figures struct {
	design                             string
	nodes                              int
	largestRN, rnTotal, etcdDB         int64
	rolloutWall                        time.Duration
	stepWritesPerNode, rnWritesPerNode float64
	steadyWrites                       int64
	operatorPeakRSS, operatorCPU       int64 // KiB, ms
	reconcileP99                       float64
	bootstrapWall                      time.Duration
	// One real agent process: peak RSS (KiB) and bytes received from the
	// API server per minute during the rollout and in steady state.
	agentPeakRSS                          int64
	agentRolloutPerMin, agentSteadyPerMin float64
	// agentBootstrap is the bytes the agent received from its start to the
	// end of the bootstrap (or of the run, if the bootstrap did not end).
	agentBootstrap int64
	// outcome is "complete", or where and why the run stopped.
	outcome string
}

func (f figures) String() string {
	return fmt.Sprintf("| %s | %d | %s | %d | %.1f | %d | %s | %s | %.2f | %.2f | %d | %.1f | %.1f | %s | %.1f | %.1f | %.2f | %.3f |",
		f.design, f.nodes, f.outcome, f.largestRN, float64(f.rnTotal)/1e6, f.etcdDB/1e6, f.bootstrapWall.Round(100*time.Millisecond),
		f.rolloutWall.Round(100*time.Millisecond), f.stepWritesPerNode, f.rnWritesPerNode, f.steadyWrites,
		float64(f.operatorPeakRSS)/1024, float64(f.operatorCPU)/1000, p99(f.reconcileP99),
		float64(f.agentPeakRSS)/1024, float64(f.agentBootstrap)/1e6, f.agentRolloutPerMin/1e6, f.agentSteadyPerMin/1e6)
}

func p99(s float64) string {
	if s < 0 {
		return "n/a"
	}
	return fmt.Sprintf("≤ %gs", s)
}

const header = "| design | nodes | outcome | largest RoutingNode (bytes, with managedFields) | RoutingNodes total (MB) | etcd db (MB) | bootstrap | rollout tunnel→native, maxUnavailable 10% | operator step writes / node | RoutingNode writes / node (steps + agent status) | writes in 15 s of steady state | operator peak RSS (MB) | operator CPU (s) | p99 reconcile | one real agent: peak RSS (MB) | agent: MB received until bootstrapped | agent: MB received / min, rollout | agent: MB received / min, steady |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"

func sizes() []int {
	if s := os.Getenv("SCALE_NODES"); s != "" {
		var out []int
		for _, f := range strings.Split(s, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || n < 2 {
				panic(fmt.Sprintf("SCALE_NODES=%q: want comma-separated node counts of at least 2", s))
			}
			out = append(out, n)
		}
		return out
	}
	return []int{100, 1000}
}

// BenchmarkRollout runs one bootstrap and one tunnel → native rollout per
// design and size; b.N is ignored beyond 1 (a rollout is the unit).
func BenchmarkRollout(b *testing.B) {
	root, err := testenv.RepoRoot()
	if err != nil {
		b.Fatal(err)
	}
	designs := []design{newDesign(root)}
	if os.Getenv("SCALE_DESIGNS") != "new" {
		old, err := oldDesign(root)
		if err != nil {
			b.Fatal(err)
		}
		designs = append([]design{old}, designs...)
	}
	var rows []string
	for _, n := range sizes() {
		for _, d := range designs {
			b.Run(fmt.Sprintf("%s/nodes=%d", d.name, n), func(b *testing.B) {
				if d.operator == "" {
					b.Fatalf("the %s operator did not build", d.name)
				}
				for b.Loop() {
					f := run(b, root, d, n)
					rows = append(rows, f.String())
					b.ReportMetric(float64(f.largestRN), "RN-bytes")
					b.ReportMetric(f.rolloutWall.Seconds(), "rollout-s")
					b.ReportMetric(f.rnWritesPerNode, "writes/node")
					b.ReportMetric(float64(f.operatorPeakRSS)/1024, "operator-MB")
					b.ReportMetric(float64(f.agentPeakRSS)/1024, "agent-MB")
				}
			})
		}
	}
	fmt.Println(header)
	for _, r := range rows {
		fmt.Println(r)
	}
}

func run(b *testing.B, root string, d design, n int) (f figures) {
	f = figures{design: d.name, nodes: n, reconcileP99: -1}
	scheme, err := rmscheme.New()
	if err != nil {
		b.Fatal(err)
	}
	env := &envtest.Environment{BinaryAssetsDirectory: assets(root), CRDDirectoryPaths: []string{d.crdDir}, ErrorIfCRDPathMissing: true, Scheme: scheme}
	cfg, err := testenv.StartEnvironment(env)
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = env.Stop() }()
	// The simulated agents and the setup are many clients in one: no
	// client-side limit, the API server's own limits apply.
	cfg = rest.CopyConfig(cfg)
	cfg.QPS = -1
	c, err := client.NewWithWatch(cfg, client.Options{Scheme: scheme})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	createNodes(b, c, n)

	op := startOperator(b, env, d, n)
	defer op.stop()
	ag1 := startRealAgent(b, env, d)
	defer ag1.stop()
	ag := startAgents(ctx, b, c, d, n)
	defer ag.stop()

	start := time.Now()
	rm := &v1alpha1.RoutingMode{ObjectMeta: metav1.ObjectMeta{Name: v1alpha1.RoutingModeName},
		Spec: v1alpha1.RoutingModeSpec{Tunnel: v1alpha1.TunnelVXLAN, TunnelPort: 8472, HostRouting: v1alpha1.HostRoutingLegacy}}
	if err := c.Create(ctx, rm); err != nil {
		b.Fatal(err)
	}
	f.outcome = "complete"
	defer func() {
		f.largestRN, f.rnTotal = routingNodeSizes(b, c)
		f.etcdDB = etcdSize(b, env)
		f.operatorPeakRSS, f.operatorCPU = op.usage()
		m := op.scrape()
		f.reconcileP99 = reconcileP99(m)
		b.Logf("operator API requests: %s; reconciles: %s; log %s", requests(m), reconciles(m), op.log)
		f.agentPeakRSS, _ = procUsage(ag1.cmd.Process.Pid)
		b.Logf("%s", f)
	}()
	why := waitComplete(c, n, 1)
	f.agentBootstrap = ag1.rx.Load()
	if why != "" {
		f.outcome = "bootstrap did not complete: " + why
		return f
	}
	f.bootstrapWall = time.Since(start)

	gens := generations(b, c)
	writes := countWrites(ctx, b, c)
	rxBefore := ag1.rx.Load()
	start = time.Now()
	if err := c.Get(ctx, client.ObjectKeyFromObject(rm), rm); err != nil {
		b.Fatal(err)
	}
	base := rm.DeepCopy()
	rm.Spec = v1alpha1.RoutingModeSpec{Tunnel: v1alpha1.TunnelDisabled, TunnelPort: 8472, NativeRoutingCIDR: "10.0.0.0/8",
		AutoDirectNodeRoutes: true, HostRouting: v1alpha1.HostRoutingLegacy,
		Rollout: v1alpha1.RolloutSpec{MaxUnavailable: new(intstr.FromString("10%"))}}
	if err := c.Patch(ctx, rm, client.MergeFrom(base)); err != nil {
		b.Fatal(err)
	}
	profiled := make(chan string, 1)
	go func() {
		profiled <- op.profile(profileSeconds(), fmt.Sprintf("routemode-scale-%s-%d.cpu.pprof", d.name, n))
	}()
	defer func() {
		if p := <-profiled; p != "" {
			top, _ := exec.Command("go", "tool", "pprof", "-top", "-nodecount", "30", p).CombinedOutput()
			b.Logf("operator CPU profile of the rollout's first %d s (%s):\n%s", profileSeconds(), p, top)
		}
	}()
	if why := waitComplete(c, n, 2); why != "" {
		f.outcome = "rollout did not complete: " + why
		return f
	}
	f.rolloutWall = time.Since(start)
	f.agentRolloutPerMin = float64(ag1.rx.Load()-rxBefore) / f.rolloutWall.Minutes()
	f.rnWritesPerNode = float64(writes.Load()) / float64(n)
	var steps int64
	for name, g := range generations(b, c) {
		steps += g - gens[name]
	}
	f.stepWritesPerNode = float64(steps) / float64(n)

	// Steady state: nothing changes, so nothing should be written.
	before, rxBefore := writes.Load(), ag1.rx.Load()
	steadyStart := time.Now()
	steady := time.NewTimer(15 * time.Second)
	<-steady.C
	f.steadyWrites = writes.Load() - before
	f.agentSteadyPerMin = float64(ag1.rx.Load()-rxBefore) / time.Since(steadyStart).Minutes()
	return f
}

func assets(root string) string {
	if a := os.Getenv("KUBEBUILDER_ASSETS"); a != "" {
		return a
	}
	return filepath.Join(root, "bin", "k8s")
}

func createNodes(b *testing.B, c client.Client, n int) {
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for w := range 16 {
		wg.Go(func() {
			for i := w; i < n; i += 16 {
				node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: nodeName(i)},
					Spec: corev1.NodeSpec{PodCIDR: podCIDR(i), PodCIDRs: []string{podCIDR(i)}}}
				if err := c.Create(context.Background(), node); err != nil {
					errs <- err
					return
				}
				node.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: nodeIP(i)}}
				if err := c.Status().Update(context.Background(), node); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
}

// operator is the operator binary running against the benchmark's API server.
type operator struct {
	cmd            *exec.Cmd
	metrics, pprof string
	done           chan struct{}
	log            string
}

func freePort(b *testing.B) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// kubeconfig writes a kubeconfig for an admin user named name; a
// non-empty via replaces the API server's address (host:port) in it.
func kubeconfig(b *testing.B, env *envtest.Environment, name, via string) string {
	user, err := env.AddUser(envtest.User{Name: name, Groups: []string{"system:masters"}}, nil)
	if err != nil {
		b.Fatal(err)
	}
	kc, err := user.KubeConfig()
	if err != nil {
		b.Fatal(err)
	}
	if via != "" {
		kc = bytes.ReplaceAll(kc, []byte("https://"+apiServer(env)), []byte("https://"+via))
		if !bytes.Contains(kc, []byte(via)) {
			b.Fatalf("the kubeconfig does not name the API server %s", apiServer(env))
		}
	}
	path := filepath.Join(b.TempDir(), name+".kubeconfig")
	if err := os.WriteFile(path, kc, 0o600); err != nil {
		b.Fatal(err)
	}
	return path
}

// apiServer is the API server's host:port.
func apiServer(env *envtest.Environment) string {
	return strings.TrimSuffix(strings.TrimPrefix(env.Config.Host, "https://"), "/")
}

func startOperator(b *testing.B, env *envtest.Environment, d design, n int) *operator {
	kcPath := kubeconfig(b, env, "routemode-operator", "")
	o := &operator{metrics: freePort(b), done: make(chan struct{})}
	args := []string{"--kubeconfig", kcPath, "--leader-elect=false", "--metrics-bind-address", o.metrics, "--health-probe-bind-address", "0"}
	args = append(args, d.operatorArgs...)
	if d.pprof {
		o.pprof = freePort(b)
		args = append(args, "--pprof-bind-address", o.pprof)
	}
	o.cmd = exec.Command(d.operator, args...)
	// Kept after the run, with the profile, to see where a rollout's time went.
	o.log = filepath.Join(os.TempDir(), fmt.Sprintf("routemode-scale-%s-%d-operator.log", d.name, n))
	logFile, err := os.Create(o.log)
	if err != nil {
		b.Fatal(err)
	}
	o.cmd.Stdout, o.cmd.Stderr = logFile, logFile
	if err := o.cmd.Start(); err != nil {
		b.Fatal(err)
	}
	// Peak RSS is the kernel's high-water mark, read until the process ends.
	go func() {
		defer close(o.done)
		_ = o.cmd.Wait()
	}()
	return o
}

// usage is the operator's peak RSS (KiB) and CPU time so far (ms).
func (o *operator) usage() (rssKiB, cpuMS int64) { return procUsage(o.cmd.Process.Pid) }

// procUsage is a process's peak RSS (KiB) and CPU time so far (ms).
func procUsage(pid int) (rssKiB, cpuMS int64) {
	status, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, line := range strings.Split(string(status), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			rssKiB, _ = strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
		}
	}
	stat, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if i := bytes.LastIndexByte(stat, ')'); i > 0 {
		fields := strings.Fields(string(stat[i+2:]))
		if len(fields) > 12 {
			ut, _ := strconv.ParseInt(fields[11], 10, 64)
			st, _ := strconv.ParseInt(fields[12], 10, 64)
			cpuMS = (ut + st) * 10 // USER_HZ is 100 on Linux
		}
	}
	return rssKiB, cpuMS
}

// scrape is the operator's metrics, "" if unread.
func (o *operator) scrape() string {
	resp, err := http.Get("http://" + o.metrics + "/metrics")
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	_, _ = buf.ReadFrom(resp.Body)
	return buf.String()
}

// requests is the API requests the operator's clients made, by method, as
// "GET 12, PATCH 3": how a rollout spent its client rate limit.
func requests(metrics string) string {
	by := map[string]float64{}
	for method, v := range samples(metrics, "rest_client_requests_total{", "method") {
		by[method] += v
	}
	var out []string
	for _, m := range slices.Sorted(maps.Keys(by)) {
		out = append(out, fmt.Sprintf("%s %.0f", m, by[m]))
	}
	return strings.Join(out, ", ")
}

// samples yields, for every line of metrics that starts with prefix, the
// value of its label and its sample.
func samples(metrics, prefix, label string) iter.Seq2[string, float64] {
	return func(yield func(string, float64) bool) {
		for _, line := range strings.Split(metrics, "\n") {
			i := strings.Index(line, label+`="`)
			j := strings.LastIndexByte(line, ' ')
			if !strings.HasPrefix(line, prefix) || i < 0 || j < 0 {
				continue
			}
			v, err := strconv.ParseFloat(line[j+1:], 64)
			start := i + len(label) + 2
			end := strings.IndexByte(line[start:], '"')
			if err != nil || end < 0 {
				continue
			}
			if !yield(line[start:start+end], v) {
				return
			}
		}
	}
}

// profile writes a CPU profile of the operator's next seconds to a file
// beside its log and returns the file's name, "" if there is none.
func (o *operator) profile(seconds int, name string) string {
	if o.pprof == "" || seconds == 0 {
		return ""
	}
	resp, err := http.Get(fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", o.pprof, seconds))
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	path := filepath.Join(os.TempDir(), name)
	f, err := os.Create(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	if _, err := io.Copy(f, resp.Body); err != nil || resp.StatusCode != http.StatusOK {
		return ""
	}
	return path
}

// reconcileP99 is the upper bound of the histogram bucket holding the 99th
// percentile of the routingmode controller's reconcile time; -1 if unread.
func reconcileP99(metrics string) float64 {
	type bucket struct {
		le    float64
		count float64
	}
	var buckets []bucket
	for leStr, cnt := range samples(metrics, `controller_runtime_reconcile_time_seconds_bucket{controller="routingmode"`, "le") {
		le, err := strconv.ParseFloat(leStr, 64)
		if leStr == "+Inf" {
			le, err = -1, nil
		}
		if err == nil {
			buckets = append(buckets, bucket{le, cnt})
		}
	}
	if len(buckets) == 0 {
		return -1
	}
	total := buckets[len(buckets)-1].count
	for _, bk := range buckets {
		if bk.count >= 0.99*total {
			return bk.le
		}
	}
	return -1
}

func (o *operator) stop() {
	_ = o.cmd.Process.Signal(os.Interrupt)
	select {
	case <-o.done:
	case <-time.After(10 * time.Second):
		_ = o.cmd.Process.Kill()
		<-o.done
	}
}

// realAgent is one routemode-agent process whose API server traffic goes
// through a counting proxy. Its node has no Node object, so it gets no
// RoutingNode and leaves the kernel alone: it shows what one agent holds
// and is sent for watching a cluster of N nodes.
type realAgent struct {
	cmd  *exec.Cmd
	done chan struct{}
	rx   *atomic.Int64
	ln   net.Listener
}

func startRealAgent(b *testing.B, env *envtest.Environment, d design) *realAgent {
	if d.agent == "" {
		b.Fatalf("the %s agent did not build", d.name)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	a := &realAgent{done: make(chan struct{}), rx: new(atomic.Int64), ln: ln}
	server := apiServer(env)
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go proxy(conn, server, a.rx)
		}
	}()
	kc := kubeconfig(b, env, "routemode-agent", ln.Addr().String())
	state := b.TempDir()
	a.cmd = exec.Command(d.agent, "--kubeconfig", kc, "--node-name", "scale-watcher", "--state-dir", state,
		"--cni-conf-dir", filepath.Join(state, "cni"), "--cni-bin-dir=", "--legacy-host-routing-only",
		"--metrics-bind-address", "0", "--health-probe-bind-address", freePort(b))
	logFile, err := os.Create(filepath.Join(b.TempDir(), "agent.log"))
	if err != nil {
		b.Fatal(err)
	}
	a.cmd.Stdout, a.cmd.Stderr = logFile, logFile
	if err := a.cmd.Start(); err != nil {
		b.Fatal(err)
	}
	go func() {
		defer close(a.done)
		_ = a.cmd.Wait()
	}()
	return a
}

// proxy relays one connection to server, counting the bytes the API server
// sends.
func proxy(conn net.Conn, server string, rx *atomic.Int64) {
	defer conn.Close()
	up, err := net.Dial("tcp", server)
	if err != nil {
		return
	}
	defer up.Close()
	go func() { _, _ = io.Copy(up, conn) }()
	_, _ = io.Copy(counter{conn, rx}, up)
}

// counter counts the bytes written through it as they pass: a watch
// connection stays open for the whole run.
type counter struct {
	w io.Writer
	n *atomic.Int64
}

func (c counter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n.Add(int64(n))
	return n, err
}

func (a *realAgent) stop() {
	_ = a.cmd.Process.Signal(os.Interrupt)
	select {
	case <-a.done:
	case <-time.After(10 * time.Second):
		_ = a.cmd.Process.Kill()
		<-a.done
	}
	_ = a.ln.Close()
}

// agents simulates every node's agent: when a RoutingNode's generation is
// not yet reported (or it has no capabilities), it applies at once and
// writes the status the real agent would, through its own client.
type agents struct {
	stop func()
}

func startAgents(ctx context.Context, b *testing.B, c client.WithWatch, d design, n int) *agents {
	ctx, cancel := context.WithCancel(ctx)
	queue := make(chan types.NamespacedName, n)
	pending := sync.Map{}
	var wg sync.WaitGroup
	wg.Go(func() {
		for ctx.Err() == nil {
			var list v1alpha1.RoutingNodeList
			if err := c.List(ctx, &list); err != nil {
				continue
			}
			for _, rn := range list.Items {
				enqueueIfStale(&rn, queue, &pending)
			}
			w, err := c.Watch(ctx, &v1alpha1.RoutingNodeList{}, &client.ListOptions{Raw: &metav1.ListOptions{ResourceVersion: list.ResourceVersion}})
			if err != nil {
				continue
			}
			for ev := range w.ResultChan() {
				if rn, ok := ev.Object.(*v1alpha1.RoutingNode); ok && ev.Type != watch.Deleted {
					enqueueIfStale(rn, queue, &pending)
				}
			}
		}
	})
	for range 32 {
		wg.Go(func() {
			for {
				select {
				case <-ctx.Done():
					return
				case key := <-queue:
					pending.Delete(key.Name)
					if err := report(ctx, c, d, n, key.Name); err != nil && ctx.Err() == nil {
						b.Logf("agent on %s: %v", key.Name, err)
						enqueueName(key.Name, queue, &pending)
					}
				}
			}
		})
	}
	return &agents{stop: func() { cancel(); wg.Wait() }}
}

func enqueueIfStale(rn *v1alpha1.RoutingNode, queue chan types.NamespacedName, pending *sync.Map) {
	if rn.Status.Capabilities == nil || rn.Status.ObservedGeneration != rn.Generation {
		enqueueName(rn.Name, queue, pending)
	}
}

func enqueueName(name string, queue chan types.NamespacedName, pending *sync.Map) {
	if _, dup := pending.LoadOrStore(name, true); !dup {
		queue <- types.NamespacedName{Name: name}
	}
}

func report(ctx context.Context, c client.Client, d design, n int, name string) error {
	var rn v1alpha1.RoutingNode
	if err := c.Get(ctx, client.ObjectKey{Name: name}, &rn); err != nil {
		return client.IgnoreNotFound(err)
	}
	var self int
	if _, err := fmt.Sscanf(name, "node-%d", &self); err != nil {
		return err
	}
	now := metav1.Now()
	st := map[string]any{
		"observedGeneration": rn.Generation,
		"nodeIP":             nodeIP(self), "podCIDR": podCIDR(self), "vtepMAC": "0e:72:c0:a8:00:01",
		"capabilities": v1alpha1.NodeCapabilities{Kernel: "6.18.44", VXLAN: true, BPFHostRouting: true, TCX: true},
	}
	for k, v := range d.peers(self, n) {
		st[k] = v
	}
	if dp := rn.Spec.Datapath; dp != nil {
		st["datapath"] = v1alpha1.NodeDatapathStatus{TunnelDevice: "rm_vxlan", SendMode: dp.SendMode, RouteMTU: 1450, HostRouting: dp.HostRouting, Endpoints: 30}
		st["conditions"] = []metav1.Condition{
			{Type: v1alpha1.ConditionDatapathApplied, Status: metav1.ConditionTrue, Reason: "Applied", ObservedGeneration: rn.Generation, LastTransitionTime: now,
				Message: fmt.Sprintf("tunnel %s, sending %s, route MTU 1450, host routing %s", dp.Tunnel, dp.SendMode, dp.HostRouting)},
			{Type: v1alpha1.ConditionPeersHealthy, Status: metav1.ConditionTrue, Reason: "AllPeersReachable", ObservedGeneration: rn.Generation, LastTransitionTime: now,
				Message: fmt.Sprintf("all %d peers answer on the pod network", n-1)},
		}
	} else {
		st["observedGeneration"] = rn.Status.ObservedGeneration
	}
	patch, err := json.Marshal(map[string]any{"status": st})
	if err != nil {
		return err
	}
	return c.Status().Patch(ctx, &rn, client.RawPatch(types.MergePatchType, patch))
}

// profileSeconds is how much of the rollout the operator's CPU profile
// covers, from its start (SCALE_PROFILE_SECONDS; 0, the default, takes none).
func profileSeconds() int {
	v := os.Getenv("SCALE_PROFILE_SECONDS")
	if v == "" {
		return 0
	}
	s, err := strconv.Atoi(v)
	if err != nil || s < 0 {
		panic(fmt.Sprintf("SCALE_PROFILE_SECONDS=%q: want a number of seconds", v))
	}
	return s
}

// reconciles is how many reconciles the operator ran, how many failed,
// and their total time.
func reconciles(metrics string) string {
	var total, errs, secs float64
	for _, line := range strings.Split(metrics, "\n") {
		j := strings.LastIndexByte(line, ' ')
		if j < 0 || !strings.Contains(line, `controller="routingmode"`) {
			continue
		}
		v, _ := strconv.ParseFloat(line[j+1:], 64)
		switch {
		case strings.HasPrefix(line, "controller_runtime_reconcile_total{") && strings.Contains(line, `result="error"`):
			errs += v
			total += v
		case strings.HasPrefix(line, "controller_runtime_reconcile_total{"):
			total += v
		case strings.HasPrefix(line, "controller_runtime_reconcile_time_seconds_sum{"):
			secs += v
		}
	}
	return fmt.Sprintf("%.0f (%.0f failed), %.1f s in all", total, errs, secs)
}

// phaseLimit bounds each of bootstrap and rollout (SCALE_PHASE_TIMEOUT).
func phaseLimit() time.Duration {
	if v := os.Getenv("SCALE_PHASE_TIMEOUT"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			panic(fmt.Sprintf("SCALE_PHASE_TIMEOUT=%q: want a duration such as 10m", v))
		}
		return d
	}
	return 10 * time.Minute
}

// waitComplete waits for the RoutingMode's status to report generation gen
// complete on n nodes; it returns why not if the rollout stalled or the
// phase limit passed.
func waitComplete(c client.Client, n int, gen int64) string {
	limit := phaseLimit()
	deadline := time.Now().Add(limit)
	last := "no status read"
	for time.Now().Before(deadline) {
		var rm v1alpha1.RoutingMode
		if err := c.Get(context.Background(), client.ObjectKey{Name: v1alpha1.RoutingModeName}, &rm); err == nil {
			st := rm.Status
			if st.ObservedGeneration == gen && st.Phase == v1alpha1.PhaseComplete && int(st.Nodes.Total) == n {
				return ""
			}
			last = fmt.Sprintf("phase %s at generation %d/%d, nodes %+v", st.Phase, st.ObservedGeneration, gen, st.Nodes)
			if st.ObservedGeneration == gen && st.Phase == v1alpha1.PhaseStalled {
				if c := meta.FindStatusCondition(st.Conditions, v1alpha1.ConditionStalled); c != nil {
					msg := c.Message
					if len(msg) > 160 {
						msg = fmt.Sprintf("%s… (%d bytes)", msg[:160], len(msg))
					}
					return fmt.Sprintf("stalled, %s: %s", c.Reason, msg)
				}
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Sprintf("not within %s (%s)", limit, last)
}

func generations(b *testing.B, c client.Client) map[string]int64 {
	var list v1alpha1.RoutingNodeList
	if err := c.List(context.Background(), &list); err != nil {
		b.Fatal(err)
	}
	out := map[string]int64{}
	for _, rn := range list.Items {
		out[rn.Name] = rn.Generation
	}
	return out
}

// countWrites counts every change to a RoutingNode from now on.
func countWrites(ctx context.Context, b *testing.B, c client.WithWatch) *atomic.Int64 {
	var list v1alpha1.RoutingNodeList
	if err := c.List(ctx, &list); err != nil {
		b.Fatal(err)
	}
	w, err := c.Watch(ctx, &v1alpha1.RoutingNodeList{}, &client.ListOptions{Raw: &metav1.ListOptions{ResourceVersion: list.ResourceVersion}})
	if err != nil {
		b.Fatal(err)
	}
	var n atomic.Int64
	go func() {
		for ev := range w.ResultChan() {
			if ev.Type == watch.Modified {
				n.Add(1)
			}
		}
	}()
	return &n
}

// routingNodeSizes is the largest RoutingNode and all of them together, as
// JSON with managedFields: what etcd stores for a custom resource.
func routingNodeSizes(b *testing.B, c client.Client) (largest, total int64) {
	var list unstructured.UnstructuredList
	list.SetGroupVersionKind(v1alpha1.GroupVersion.WithKind("RoutingNodeList"))
	if err := c.List(context.Background(), &list); err != nil {
		b.Logf("listing RoutingNodes: %v", err)
		return -1, -1
	}
	for _, item := range list.Items {
		raw, err := item.MarshalJSON()
		if err != nil {
			b.Fatal(err)
		}
		largest = max(largest, int64(len(raw)))
		total += int64(len(raw))
	}
	return largest, total
}

// etcdSize is etcd's database size, from its metrics.
func etcdSize(b *testing.B, env *envtest.Environment) int64 {
	u := env.ControlPlane.Etcd.URL
	resp, err := http.Get(u.String() + "/metrics")
	if err != nil {
		b.Logf("reading etcd metrics: %v", err)
		return -1
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	_, _ = buf.ReadFrom(resp.Body)
	for _, line := range strings.Split(buf.String(), "\n") {
		if rest, ok := strings.CutPrefix(line, "etcd_mvcc_db_total_size_in_bytes "); ok {
			v, _ := strconv.ParseFloat(rest, 64)
			return int64(v)
		}
	}
	return -1
}
