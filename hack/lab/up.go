package lab

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
	"slices"
	"strings"
	"time"

	"k8s.io/client-go/kubernetes"

	"github.com/routemode/routemode/agent/cniconf"
	"github.com/routemode/routemode/agent/hostrouting"
	"github.com/routemode/routemode/internal/netlab"
)

// Up starts a lab and returns once every agent is running and every pod is
// wired. On failure it removes what it made.
func Up(ctx context.Context, cfg Config) (l *Lab, err error) {
	if cfg.Nodes < 1 || cfg.Nodes > 9 {
		return nil, fmt.Errorf("a lab has 1 to 9 nodes, not %d", cfg.Nodes)
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("the lab creates network namespaces and loads eBPF programs: run it as root")
	}
	for _, b := range []string{"routemode-agent", "routemode-operator", "routemode-cni", "routemode-lab"} {
		if _, err := os.Stat(filepath.Join(cfg.Bin, b)); err != nil {
			return nil, fmt.Errorf("%s not found in %s: run `make build`", b, cfg.Bin)
		}
	}
	for _, b := range []string{"kube-apiserver", "etcd", "kubectl"} {
		if _, err := os.Stat(filepath.Join(cfg.K8sBin, b)); err != nil {
			return nil, fmt.Errorf("%s not found in %s: run `make envtest-bin`", b, cfg.K8sBin)
		}
	}
	if cfg.RealNodes {
		for _, b := range append(slices.Clone(NodeBinaries), filepath.Join("images", "pause.tar")) {
			if _, err := os.Stat(filepath.Join(cfg.NodeBin, b)); err != nil {
				return nil, fmt.Errorf("%s not found in %s: run `make node-bin`", b, cfg.NodeBin)
			}
		}
		for _, img := range cfg.Images {
			if _, err := os.Stat(img); err != nil {
				return nil, fmt.Errorf("image archive %s: %w (run `make images`)", img, err)
			}
		}
		if err := checkInotify(cfg.Nodes); err != nil {
			return nil, err
		}
		if !slices.ContainsFunc(cfg.Images, func(img string) bool { return filepath.Base(img) == EchoArchive }) {
			return nil, fmt.Errorf("the real nodes' Service workload needs the %s image archive among the images (run `make images`; it is bin/images/%s)", EchoImage, EchoArchive)
		}
	}
	if cfg.Dir, err = filepath.Abs(cfg.Dir); err != nil {
		return nil, err
	}
	l = &Lab{cfg: cfg, cp: &controlPlane{dir: filepath.Join(cfg.Dir, "controlplane")}}
	if cfg.RealNodes {
		l.cp.advertise = netlab.OutsideIP.String()
	}
	if err := l.checkFree(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(l.path("logs"), 0o700); err != nil {
		return nil, err
	}
	l.state.Prefix = cfg.Prefix
	for i := 1; i <= cfg.Nodes; i++ {
		l.state.PinDirs = append(l.state.PinDirs, hostrouting.DefaultPinDir(l.nodeName(i)))
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, keepLogs(cfg.Dir), Down(cfg.Dir))
		}
	}()
	if err := l.saveState(); err != nil {
		return nil, err
	}

	if err := l.cp.start(ctx, l); err != nil {
		return nil, err
	}
	l.state.APIPort = l.cp.apiPort
	if err := l.cp.kubeconfig(l.Kubeconfig(), l.cp.url(), "lab-admin", l.cp.adminTok); err != nil {
		return nil, err
	}
	if cfg.RealNodes {
		return l, l.upReal(ctx)
	}
	if err := l.installAPI(); err != nil {
		return nil, err
	}
	cs, err := kubernetes.NewForConfig(l.cp.restConfig())
	if err != nil {
		return nil, err
	}
	if err := ensureServiceAccounts(ctx, cs); err != nil {
		return nil, err
	}
	if err := l.buildNodes(); err != nil {
		return nil, fmt.Errorf("building the nodes: %w", err)
	}
	if err := l.registerNodes(ctx, cs); err != nil {
		return nil, err
	}
	if err := l.startOperator(ctx, cs); err != nil {
		return nil, err
	}
	l.state.Nodes = l.Nodes
	for _, n := range l.Nodes {
		if err := l.startAgent(ctx, cs, n); err != nil {
			return nil, err
		}
	}
	return l, l.saveState()
}

// AddPods gives every node a pod, once the agents wrote their CNI
// configuration (after the first RoutingMode reached them). Pods that exist
// are kept.
func (l *Lab) AddPods(ctx context.Context) error {
	if l.Real() {
		return l.addRealPods(ctx)
	}
	for i, n := range l.Nodes {
		name := l.podName(i + 1)
		if slices.ContainsFunc(l.state.Pods, func(p PodState) bool { return p.Name == name }) {
			continue
		}
		if err := wait(ctx, 60*time.Second, "the agent on "+n.NS+" to write its CNI configuration", func() (bool, error) {
			_, err := os.Stat(l.nodeDir(n, "net.d", cniconf.FileName))
			return err == nil, fmt.Errorf("see %s", l.path("logs", "agent-"+n.NS+".log"))
		}); err != nil {
			return err
		}
		if err := l.addPod(ctx, n, name); err != nil {
			return err
		}
	}
	return nil
}

// installAPI applies what config/default would, minus the workloads the lab
// runs itself: the namespace, CRDs, RBAC and the admission policy.
func (l *Lab) installAPI() error {
	cfgDir := filepath.Join(l.cfg.Root, "config")
	for _, args := range [][]string{
		{"apply", "-f", filepath.Join(cfgDir, "default", "namespace.yaml")},
		{"apply", "-k", filepath.Join(cfgDir, "crd")},
		{"apply", "-k", filepath.Join(cfgDir, "rbac")},
		{"apply", "-k", filepath.Join(cfgDir, "admission")},
		{"wait", "--for=condition=Established", "--timeout=60s", "crd/routingmodes.routemode.io", "crd/routingnodes.routemode.io"},
	} {
		if _, err := l.Kubectl(args...); err != nil {
			return err
		}
	}
	return nil
}

// Kubectl runs the lab's kubectl with the admin kubeconfig.
func (l *Lab) Kubectl(args ...string) (string, error) {
	return run(filepath.Join(l.cfg.K8sBin, "kubectl"), append([]string{"--kubeconfig", l.Kubeconfig()}, args...)...)
}

func (l *Lab) startOperator(ctx context.Context, cs kubernetes.Interface) error {
	tok, err := serviceAccountToken(ctx, cs, "routemode-operator")
	if err != nil {
		return err
	}
	if err := l.cp.kubeconfig(l.path("operator.kubeconfig"), l.cp.url(), "routemode-operator", tok); err != nil {
		return err
	}
	return l.spawnOperator("operator")
}

// spawnOperator starts an operator replica called name under a supervisor,
// with the kubeconfig startOperator wrote; replicas elect a leader, as a
// Deployment's would.
func (l *Lab) spawnOperator(name string) error {
	metrics, err := freePort()
	if err != nil {
		return err
	}
	probes, err := freePort()
	if err != nil {
		return err
	}
	if name == "operator" {
		l.state.OperatorMetricsPort = metrics
	}
	return l.spawn(name, filepath.Join(l.cfg.Bin, "routemode-operator"),
		"--kubeconfig", l.path("operator.kubeconfig"), "--leader-elect", "--leader-election-namespace", Namespace,
		// Plain HTTP, loopback only: the lab scrapes without tokens.
		"--metrics-bind-address", fmt.Sprintf("127.0.0.1:%d", metrics), "--metrics-secure=false",
		"--health-probe-bind-address", fmt.Sprintf("127.0.0.1:%d", probes))
}

// nodeDir holds one node's CNI directories and agent state.
func (l *Lab) nodeDir(n Node, parts ...string) string {
	return l.path(append([]string{"nodes", n.NS}, parts...)...)
}

// startAgent runs the real agent in the node's network namespace, with a
// token bound to its Node, reaching the API server through the node's relay.
// nsenter enters only the network namespace: `ip netns exec` would also
// remount /sys and hide the bpffs pins that keep the datapath across
// agent restarts.
func (l *Lab) startAgent(ctx context.Context, cs kubernetes.Interface, n Node) error {
	for _, d := range []string{"net.d", "bin", "state"} {
		if err := os.MkdirAll(l.nodeDir(n, d), 0o700); err != nil {
			return err
		}
	}
	nsPath := filepath.Join("/var/run/netns", n.NS)
	if err := l.spawn("relay-"+n.NS, filepath.Join(l.cfg.Bin, "routemode-lab"), "relay",
		"--netns", nsPath, "--to", fmt.Sprintf("127.0.0.1:%d", l.cp.apiPort)); err != nil {
		return err
	}
	if err := l.agentKubeconfig(ctx, cs, n); err != nil {
		return err
	}
	l.state.Namespaces = append(l.state.Namespaces, "rmhealth-"+n.NS)
	if err := l.saveState(); err != nil {
		return err
	}
	return l.spawnAgent(n)
}

// agentKubeconfig writes n's agent a kubeconfig with a token bound to its
// Node, through the node's relay.
func (l *Lab) agentKubeconfig(ctx context.Context, cs kubernetes.Interface, n Node) error {
	tok, err := agentToken(ctx, cs, n.NS)
	if err != nil {
		return err
	}
	return l.cp.kubeconfig(l.nodeDir(n, "kubeconfig"), fmt.Sprintf("https://127.0.0.1:%d", RelayPort), "routemode-agent", tok)
}

// spawnAgent starts n's agent under a supervisor, with the kubeconfig
// startAgent wrote: also to bring back an agent a fault stopped for good.
func (l *Lab) spawnAgent(n Node) error {
	nsPath := filepath.Join("/var/run/netns", n.NS)
	args := append([]string{"--net=" + nsPath, "--", filepath.Join(l.cfg.Bin, "routemode-agent"),
		"--node-name", n.NS, "--kubeconfig", l.nodeDir(n, "kubeconfig"),
		"--cni-conf-dir", l.nodeDir(n, "net.d"), "--cni-bin-dir", l.nodeDir(n, "bin"),
		"--install-cni-from", filepath.Join(l.cfg.Bin, "routemode-cni"),
		"--state-dir", l.nodeDir(n, "state"),
		// In the node's namespace, so every node can use the same port.
		"--metrics-bind-address", fmt.Sprintf("127.0.0.1:%d", AgentMetricsPort),
		// Plain HTTP: the e2e tests scrape from inside the node's namespace
		// without a token.
		"--metrics-secure=false"}, l.cfg.AgentArgs...)
	return l.spawn("agent-"+n.NS, "nsenter", args...)
}

// addPod creates a pod the way a kubelet does: a named network namespace,
// then the CNI plugin called with CNI_COMMAND=ADD and the configuration the
// agent wrote, inside the node's network namespace.
func (l *Lab) addPod(ctx context.Context, n Node, pod string) error {
	ip, err := l.wirePod(ctx, n, pod)
	if err != nil {
		return err
	}
	l.state.Pods = append(l.state.Pods, PodState{Name: pod, Node: n.NS, IP: ip})
	return l.saveState()
}

// wirePod creates pod's namespace (recorded, so Down removes it) and wires
// it with CNI ADD; it returns the pod's address.
func (l *Lab) wirePod(ctx context.Context, n Node, pod string) (netip.Addr, error) {
	if err := l.addNamespace(pod); err != nil {
		return netip.Addr{}, err
	}
	out, err := l.CNI(ctx, n, "ADD", pod)
	if err != nil {
		return netip.Addr{}, err
	}
	var res struct {
		IPs []struct {
			Address string `json:"address"`
		} `json:"ips"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil || len(res.IPs) == 0 {
		return netip.Addr{}, fmt.Errorf("CNI ADD of %s gave no address: %q", pod, out)
	}
	pfx, err := netip.ParsePrefix(res.IPs[0].Address)
	return pfx.Addr(), err
}

// CNI calls the routemode-cni plugin on node n for pod, as a kubelet would.
func (l *Lab) CNI(ctx context.Context, n Node, command, pod string) (string, error) {
	list, err := os.ReadFile(l.nodeDir(n, "net.d", cniconf.FileName))
	if err != nil {
		return "", err
	}
	stdin, err := cniconf.PluginStdin(list)
	if err != nil {
		return "", err
	}
	cmd := exec.CommandContext(ctx, "nsenter", "--net="+filepath.Join("/var/run/netns", n.NS), "--", filepath.Join(l.nodeDir(n, "bin"), cniconf.PluginType))
	cmd.Env = append(os.Environ(),
		"CNI_COMMAND="+command, "CNI_CONTAINERID="+pod, "CNI_NETNS="+filepath.Join("/var/run/netns", pod),
		"CNI_IFNAME=eth0", "CNI_PATH="+l.nodeDir(n, "bin"),
		"CNI_ARGS=K8S_POD_NAMESPACE=default;K8S_POD_NAME="+pod)
	cmd.Stdin = bytes.NewReader(stdin)
	out, err := cmd.Output()
	if err != nil {
		var stderr string
		if ee := (*exec.ExitError)(nil); errors.As(err, &ee) {
			stderr = string(ee.Stderr)
		}
		return "", fmt.Errorf("CNI %s of %s on %s: %w: %s %s", command, pod, n.NS, err, strings.TrimSpace(string(out)), stderr)
	}
	return string(out), nil
}

// keepLogs saves a failed lab's logs next to its directory, since Down
// removes the directory and the logs say why it failed.
func keepLogs(dir string) error {
	saved := dir + "-failed-logs"
	if err := os.RemoveAll(saved); err != nil {
		return err
	}
	if err := os.Rename(filepath.Join(dir, "logs"), saved); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	fmt.Fprintf(os.Stderr, "the failed lab's logs are in %s\n", saved)
	return nil
}
