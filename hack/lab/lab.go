// Package lab runs a routemode cluster on one machine: a kube-apiserver and
// etcd built from source, nodes as network namespaces on a shared underlay
// bridge, the real routemode-agent in every node namespace, the real
// routemode-operator, and pods as named network namespaces wired by the real
// routemode-cni plugin. `make lab-up`, `make lab-down`, `make demo` and the
// end-to-end tests all use it.
//
// Nothing is added to the host's own network namespace: the bridge lives in
// a namespace of its own, and agents reach the API server through a relay
// listening on 127.0.0.1 inside each node namespace. Everything the lab
// makes is recorded in its state directory, so Down removes it all, also
// after the lab itself crashed.
package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"github.com/routemode/routemode/agent/nsutil"
	"github.com/routemode/routemode/internal/netlab"
)

// Namespace is where the lab's service accounts live, as in config/default.
const Namespace = "routemode-system"

// Config shapes a lab.
type Config struct {
	// Dir holds the lab's state: certificates, kubeconfigs, logs, pids.
	Dir string
	// Nodes is the number of nodes (1 to 9).
	Nodes int
	// Prefix is prepended to every namespace name; empty for the demo's
	// plain node-1, node-2, ... names.
	Prefix string
	// Bin holds routemode-agent, routemode-operator, routemode-cni,
	// routemode-lab and routemodectl.
	Bin string
	// K8sBin holds kube-apiserver, etcd and kubectl.
	K8sBin string
	// Root is the repository root, for config/.
	Root string
	// HealthCheckTimeout shortens the agents' probe intervals in tests.
	AgentArgs []string
	// RealNodes runs containerd, a kubelet and kube-proxy on every node
	// and installs routemode with `kubectl apply -k config/default`
	// (realnodes.go), instead of running the agents and operator as
	// processes and wiring pods by hand.
	RealNodes bool
	// NodeBin holds the real nodes' binaries and images/pause.tar (`make
	// node-bin`).
	NodeBin string
	// Images are the image archives imported into every real node before
	// routemode is installed (`make images`).
	Images []string
	// NoInstall leaves installing routemode on the real nodes to the
	// caller (the Helm test installs the chart): Up returns once the
	// nodes are registered and the images loaded.
	NoInstall bool
}

// State is what Down needs to remove everything: saved as state.json. The
// nodes and the underlay are internal/netlab's, recorded in netlab.json.
type State struct {
	Prefix     string   `json:"prefix"`
	Underlay   string   `json:"underlay"`
	Namespaces []string `json:"namespaces"`
	PIDs       []int    `json:"pids"`
	PinDirs    []string `json:"pinDirs"`
	APIPort    int      `json:"apiPort"`
	// OperatorMetricsPort is where the first operator replica serves its
	// metrics, on the host's loopback.
	OperatorMetricsPort int        `json:"operatorMetricsPort,omitempty"`
	Pods                []PodState `json:"pods"`
	Nodes               []Node     `json:"nodes"`
	// NodePIDs hold the real nodes' mount namespaces; Cgroups are the
	// cgroup directories the lab made for them.
	NodePIDs []int    `json:"nodePIDs,omitempty"`
	Cgroups  []string `json:"cgroups,omitempty"`
	// Echo is the real nodes' Service workload (echo.go).
	Echo *EchoState `json:"echo,omitempty"`
}

// PodState is one pod of the lab.
type PodState struct {
	Name string     `json:"name"`
	Node string     `json:"node"`
	IP   netip.Addr `json:"ip"`
	// NSPath is a real node's pod network namespace, as its containerd
	// made it; empty for the lab's own named namespaces.
	NSPath string `json:"nsPath,omitempty"`
}

// netns is the path of the pod's network namespace.
func (p PodState) netns() string {
	if p.NSPath != "" {
		return p.NSPath
	}
	return nsPath(p.Name)
}

// Lab is a running lab.
type Lab struct {
	cfg   Config
	state State
	cp    *controlPlane
	Nodes []Node
}

// Node is one node namespace; the Node object has the namespace's name.
type Node struct {
	Name    string       `json:"name"`
	NS      string       `json:"ns"`
	IP      netip.Addr   `json:"ip"`
	PodCIDR netip.Prefix `json:"podCIDR"`
}

// netlabState is where internal/netlab records the nodes, in the lab's
// directory.
const netlabState = "netlab.json"

func (l *Lab) path(parts ...string) string {
	return filepath.Join(append([]string{l.cfg.Dir}, parts...)...)
}

// Kubeconfig is the admin kubeconfig's absolute path.
func (l *Lab) Kubeconfig() string { return l.path("kubeconfig") }

func (l *Lab) saveState() error {
	b, err := json.MarshalIndent(l.state, "", "  ")
	if err != nil {
		return err
	}
	// Through a rename, so a lab killed while saving leaves the previous
	// state for Down, not a torn file.
	tmp := l.path("state.json.tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, l.path("state.json"))
}

// spawn starts a long-running process detached from the caller, so it
// outlives `lab up`, with its output in logs/<name>.log, under a
// supervisor (`routemode-lab supervise`, see Supervise) that restarts it
// when it exits, as a kubelet would.
func (l *Lab) spawn(name, bin string, args ...string) error {
	args = append([]string{"supervise", "--pid-file", l.pidFile(name), "--", bin}, args...)
	bin = filepath.Join(l.cfg.Bin, "routemode-lab")
	logf, err := os.OpenFile(l.path("logs", name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting %s: %w", name, err)
	}
	l.state.PIDs = append(l.state.PIDs, cmd.Process.Pid)
	go func() { _ = cmd.Wait() }()
	return l.saveState()
}

// agentPID is the process id of n's running agent. nsenter execs the
// agent in place, so the supervised process is the agent itself.
func (l *Lab) agentPID(n Node) (int, error) { return l.supervisedPID("agent-" + n.NS) }

// run runs a short command and returns its combined output.
func run(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

func isExists(err error) bool { return apierrors.IsAlreadyExists(err) }

// Down removes everything a lab in dir made: its processes, namespaces
// (and with them every device in them), bpffs pins and files. It goes on
// past errors and reports them all, so a half-made lab is still removed.
func Down(dir string) error {
	raw, err := os.ReadFile(filepath.Join(dir, "state.json"))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var st State
	if err := json.Unmarshal(raw, &st); err != nil {
		return fmt.Errorf("reading %s: %w", filepath.Join(dir, "state.json"), err)
	}
	var errs []error
	stopRealNodes(st.NodePIDs)
	for _, pid := range st.PIDs {
		// Each process leads its own session: end its whole group.
		if err := syscall.Kill(-pid, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
			errs = append(errs, fmt.Errorf("stopping pid %d: %w", pid, err))
		}
	}
	waitGone(st.PIDs, 10*time.Second)
	for _, pid := range st.PIDs {
		_ = syscall.Kill(-pid, syscall.SIGKILL)
	}
	if err := removeCgroups(st.Cgroups); err != nil {
		errs = append(errs, err)
	}
	for _, ns := range st.Namespaces {
		if err := nsutil.Delete(ns); err != nil {
			errs = append(errs, err)
		}
	}
	if err := netlab.Down(filepath.Join(dir, netlabState)); err != nil {
		errs = append(errs, err)
	}
	for _, d := range st.PinDirs {
		if err := os.RemoveAll(d); err != nil {
			errs = append(errs, err)
		}
		// The shared parent goes too once no node of any lab uses it.
		_ = os.Remove(filepath.Dir(d))
	}
	if err := os.RemoveAll(dir); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func waitGone(pids []int, limit time.Duration) {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		alive := false
		for _, pid := range pids {
			if syscall.Kill(pid, 0) == nil {
				if b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat"); err == nil && !strings.Contains(string(b), ") Z ") {
					alive = true
				}
			}
		}
		if !alive {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// checkFree refuses to start over an existing lab or namespaces of the same
// names, which the lab would otherwise take over and later delete.
func (l *Lab) checkFree() error {
	if _, err := os.Stat(l.path("state.json")); err == nil {
		return fmt.Errorf("a lab is already running from %s: run `make lab-down` first", l.cfg.Dir)
	}
	for _, ns := range l.namespaceNames() {
		if _, err := os.Stat(filepath.Join("/var/run/netns", ns)); err == nil {
			return fmt.Errorf("network namespace %s already exists and the lab did not make it: remove it (ip netns delete %s) or use another prefix", ns, ns)
		}
	}
	return nil
}

// namespaceNames are the namespaces the lab makes itself, besides
// netlab's (which netlab refuses to take over).
func (l *Lab) namespaceNames() []string {
	var names []string
	for i := 1; i <= l.cfg.Nodes; i++ {
		names = append(names, l.nodeName(i), l.podName(i))
	}
	return names
}

// nodeName is the namespace netlab gives node i, also its Node object's
// name.
func (l *Lab) nodeName(i int) string { return fmt.Sprintf("%snode-%d", l.cfg.Prefix, i) }
func (l *Lab) podName(i int) string  { return fmt.Sprintf("%spod-%d", l.cfg.Prefix, i) }

// wait polls ok until it holds or limit passes.
func wait(ctx context.Context, limit time.Duration, what string, ok func() (bool, error)) error {
	deadline := time.Now().Add(limit)
	var last error
	for time.Now().Before(deadline) {
		done, err := ok()
		if done {
			return nil
		}
		last = err
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	if last != nil {
		return fmt.Errorf("timed out after %s waiting for %s: %w", limit, what, last)
	}
	return fmt.Errorf("timed out after %s waiting for %s", limit, what)
}

// K8sBin is the directory of kubectl.
func (l *Lab) K8sBin() string { return l.cfg.K8sBin }
