package lab

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/routemode/routemode/internal/netlab"
)

// Real nodes: every node namespace runs containerd (with runc), a kubelet
// and kube-proxy, the control plane adds kube-scheduler and
// kube-controller-manager, and routemode is installed with
// `kubectl apply -k config/default` from image archives imported into every
// node's containerd, as a user installs it on a cluster.
//
// A node's processes share its network namespace and a mount and UTS
// namespace of their own (nodeScript), so that what a kubelet and a
// container runtime write to well-known host paths (/etc/cni/net.d,
// /opt/cni/bin, /var/lib/kubelet, /run, bpffs, kernel sysctls) lands in the
// node's own directories and never on the host.

// NodeBinaries are what real nodes need from bin/node (`make node-bin`).
var NodeBinaries = []string{"kubelet", "kube-proxy", "kube-scheduler", "kube-controller-manager",
	"containerd", "ctr", "containerd-shim-runc-v2"}

// ClusterCIDR is the pod network kube-controller-manager cuts the nodes'
// podCIDRs from, one /24 each, as netlab addresses them.
var ClusterCIDR = netlab.PodPrefix

// serviceCIDR holds the ClusterIPs; the API server's own is its first
// address.
const (
	serviceCIDR      = "10.96.0.0/16"
	kubernetesSvcIP  = "10.96.0.1"
	containerdSocket = "/run/containerd/containerd.sock"
)

// kernelTunables are the global sysctls a kubelet sets at start
// (setupKernelTunables): each node sees a file of its own bind-mounted over
// them, so the host's values never change.
var kernelTunables = []string{"vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic",
	"kernel/panic_on_oops", "kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes"}

// cgroupControllers are the cgroup v1 hierarchies a kubelet with the
// cgroupfs driver expects its cgroupRoot in.
func cgroupControllers() ([]string, error) {
	f, err := os.Open("/proc/self/cgroup")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) != 3 || parts[1] == "" {
			continue // the unified hierarchy: kubelet uses the v1 ones here
		}
		name := strings.TrimPrefix(parts[1], "name=")
		if strings.Contains(name, ",") {
			return nil, fmt.Errorf("co-mounted cgroup controllers %q are not supported by the lab", name)
		}
		out = append(out, name)
	}
	return out, sc.Err()
}

// nodeCgroupPrefix begins the name of every node's cgroupRoot: only
// cgroups of that name are ever killed and removed with what is below.
const nodeCgroupPrefix = "routemode-lab-"

// nodeCPUShares is each node's CPU weight (cgroup v1 cpu.shares) against
// the other processes of the cgroup the lab runs in, where every process
// weighs 1024: a real node has CPUs of its own, and a simulated one that
// weighs as much as one compiler left its pods waiting seconds for a CPU
// while builds and tests ran beside the lab (the Service workload's
// threads waited 7.5 minutes in all during a 2-minute switch at load 27,
// and 46 of 624 requests timed out while the datapath lost no probe).
// Within the node, the kubelet shares it out among its pods as usual.
const nodeCPUShares = 8192

// labCgroup is the memory cgroup this process runs in: the nodes' cgroups
// go below it (in every hierarchy, at the same path, as the cgroupfs
// driver requires), never at a hierarchy's root.
func labCgroup() (string, error) {
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return "", err
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if parts := strings.SplitN(line, ":", 3); len(parts) == 3 && parts[1] == "memory" {
			return parts[2], nil
		}
	}
	return "", errors.New("no memory cgroup in /proc/self/cgroup: real nodes need cgroup v1 (hybrid)")
}

// makeCgroup creates path in every v1 hierarchy, recording each directory
// it makes (before making it) so Down removes exactly those. cpuset
// directories start empty: each gets its parent's CPUs and memory nodes,
// or no task could join it.
func (l *Lab) makeCgroup(path string) error {
	ctrls, err := cgroupControllers()
	if err != nil {
		return err
	}
	// In hybrid mode runc also makes the containers' cgroups in the
	// unified hierarchy: the lab does not create that path, but removes it.
	if _, err := os.Stat("/sys/fs/cgroup/unified/cgroup.controllers"); err == nil {
		l.state.Cgroups = append(l.state.Cgroups, filepath.Join("/sys/fs/cgroup/unified", path))
	}
	for _, c := range ctrls {
		dir := filepath.Join("/sys/fs/cgroup", c)
		for _, part := range strings.Split(strings.Trim(path, "/"), "/") {
			parent := dir
			dir = filepath.Join(dir, part)
			if _, err := os.Stat(dir); err == nil {
				continue
			}
			l.state.Cgroups = append(l.state.Cgroups, dir)
			if err := l.saveState(); err != nil {
				return err
			}
			if err := os.Mkdir(dir, 0o755); err != nil {
				return err
			}
			if c == "cpu" && dir == filepath.Join("/sys/fs/cgroup", c, path) {
				if err := os.WriteFile(filepath.Join(dir, "cpu.shares"), []byte(strconv.Itoa(nodeCPUShares)), 0o644); err != nil {
					return fmt.Errorf("%s: %w", filepath.Join(dir, "cpu.shares"), err)
				}
			}
			if c == "cpuset" {
				for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
					v, err := os.ReadFile(filepath.Join(parent, f))
					if err != nil {
						return err
					}
					if err := os.WriteFile(filepath.Join(dir, f), v, 0o644); err != nil {
						return fmt.Errorf("%s: %w", filepath.Join(dir, f), err)
					}
				}
			}
		}
	}
	return nil
}

// removeCgroups kills every task left in the recorded nodes' cgroups
// (containers whose shims are gone) and removes them with what the kubelet
// made below, deepest first. A recorded parent (made because it was
// missing in a hierarchy) is only removed when empty: other labs' nodes,
// and in some hierarchies every process of the machine's session, may be
// below it by now, and must not be killed.
func removeCgroups(dirs []string) error {
	var errs []error
	for _, d := range slices.Backward(dirs) {
		if !strings.HasPrefix(filepath.Base(d), nodeCgroupPrefix) {
			if err := syscall.Rmdir(d); err != nil && !errors.Is(err, syscall.ENOENT) && !errors.Is(err, syscall.EBUSY) {
				errs = append(errs, fmt.Errorf("removing cgroup %s: %w", d, err))
			}
			continue
		}
		for _, p := range slices.Backward(killCgroupTree(d)) {
			if err := rmdirWhenEmpty(p); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// killCgroupTree SIGKILLs every task in cgroup d and below, and returns
// the cgroups, parents first.
func killCgroupTree(d string) []string {
	var tree []string
	_ = filepath.WalkDir(d, func(p string, e os.DirEntry, err error) error {
		if err == nil && e.IsDir() {
			tree = append(tree, p)
		}
		return nil
	})
	for _, p := range tree {
		killTasks(p)
	}
	return tree
}

func killTasks(cgroup string) {
	b, _ := os.ReadFile(filepath.Join(cgroup, "cgroup.procs"))
	for f := range strings.FieldsSeq(string(b)) {
		if pid, err := strconv.Atoi(f); err == nil {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// rmdirWhenEmpty removes a cgroup once its killed tasks have exited.
func rmdirWhenEmpty(dir string) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := syscall.Rmdir(dir)
		if err == nil || errors.Is(err, syscall.ENOENT) {
			return nil
		}
		if !errors.Is(err, syscall.EBUSY) || time.Now().After(deadline) {
			return fmt.Errorf("removing cgroup %s: %w", dir, err)
		}
		killTasks(dir)
		time.Sleep(100 * time.Millisecond)
	}
}

// nodeNamespaces are the mount and network namespaces of the node whose
// namespaces pid holds, or none when pid is gone or shares the lab's own
// mount namespace: a recorded pid that is gone and reused by a host
// process must never make the host's processes pass for a node's.
func nodeNamespaces(pid int) []string {
	mnt, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", pid))
	own, _ := os.Readlink("/proc/self/ns/mnt")
	if err != nil || mnt == own {
		return nil
	}
	net, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", pid))
	if err != nil {
		return nil
	}
	return []string{mnt, net}
}

// inNamespaces lists the processes in any of the namespaces nss: a node's
// containerd, kubelet and kube-proxy (its mount namespace), its shims,
// which unshare a mount namespace of their own, and its host-network pods
// (its network namespace), whatever session or process group they are in.
func inNamespaces(nss map[string]bool) []int {
	entries, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		// Not this process: its main thread may be in a node's network
		// namespace for a moment (a goroutine probing a pod there), and
		// /proc/<pid>/ns shows that thread's. A real-node test was
		// SIGKILLed while removing its lab, after its last phase passed:
		// this is the way found for it to have killed itself.
		if err != nil || p == os.Getpid() {
			continue
		}
		for _, kind := range []string{"mnt", "net"} {
			if ns, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/%s", p, kind)); err == nil && nss[ns] {
				out = append(out, p)
				break
			}
		}
	}
	return out
}

// nodeScript sets up a node's mount namespace and runs its containerd,
// kube-proxy and kubelet. It runs as `nsenter --net=NODE unshare -m --uts
// --propagation private`: only the network namespace is entered (`ip netns
// exec` would remount /sys and hide the cgroup tree), and the new mount
// namespace starts private, so nothing mounted here reaches the host.
const nodeScript = `#!/bin/bash
set -euo pipefail
D=$1 NODE=$2 BIN=$3
hostname "$NODE"
# A sysfs of the node's network namespace (its devices under
# /sys/class/net), with the host's cgroup tree moved back into it, and a
# bpffs of the node's own: pins die with the node.
mkdir -p "$D/mnt/cgroup"
mount --rbind /sys/fs/cgroup "$D/mnt/cgroup"
mount -t sysfs sysfs /sys
mount --move "$D/mnt/cgroup" /sys/fs/cgroup
mount -t bpf bpf /sys/fs/bpf
# The node's own /run (containerd's socket and state, pod network
# namespaces, the agent's state), /opt and /var/lib and /var/log, and an
# /etc that shows the host's with the node's changes (/etc/cni/net.d) on
# top.
mount -t tmpfs -o mode=755 tmpfs /run
mkdir -p /run/netns
mount -t tmpfs -o mode=755 tmpfs /opt
mount -t tmpfs -o mode=755 tmpfs /var/lib
mount -t tmpfs -o mode=755 tmpfs /var/log
mkdir -p "$D/etc/upper" "$D/etc/work"
mount -t overlay overlay -o "lowerdir=/etc,upperdir=$D/etc/upper,workdir=$D/etc/work" /etc
mkdir -p /etc/cni/net.d /opt/cni/bin /var/lib/containerd /var/lib/kubelet /var/lib/cni /var/log/pods /var/log/containers
# Images and pods' volumes on disk, not in memory.
mkdir -p "$D/containerd" "$D/kubelet"
mount --bind "$D/containerd" /var/lib/containerd
mount --bind "$D/kubelet" /var/lib/kubelet
# The kernel tunables the kubelet sets: files of the node's own.
mkdir -p "$D/sysctl"
for f in ` + "{{TUNABLES}}" + `; do
	saved="$D/sysctl/${f//\//.}"
	cat "/proc/sys/$f" >"$saved"
	mount --bind "$saved" "/proc/sys/$f"
done
# Volumes and pod network namespaces mounted later reach the containers
# that mount them with propagation (the agent's /var/run/netns).
mount --make-rshared /
# A real node has a default route: without one, connections from the
# node to ClusterIPs (the agent's to the API server) fail before
# kube-proxy's rules see them. The underlay's own address is the gateway.
ip route replace default via "$5" dev ` + netlab.UnderlayDev + `
export PATH="$BIN:$PATH"
containerd --config "$D/containerd.toml" &
until [ -S ` + containerdSocket + ` ]; do
	kill -0 $! # containerd still running, or give up
	sleep 0.1
done
kube-proxy --config "$D/kube-proxy.yaml" --v=1 &
kubelet --config "$D/kubelet.yaml" --kubeconfig "$D/kubeconfig" --hostname-override "$NODE" --node-ip "$4" --v=1 &
# One of them stopped: the node is broken, say so in the log.
wait -n
echo "a node process exited: $?" >&2
exit 1
`

// containerdConfig is a node's containerd: CRI with runc through the
// cgroupfs driver, pod networks from the CNI configuration the agent
// writes, and the oom_score_adj floor the lab's processes have (they lack
// CAP_SYS_RESOURCE).
const containerdConfig = `version = 3
root = "/var/lib/containerd"
state = "/run/containerd"
disabled_plugins = ["io.containerd.nri.v1.nri", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "` + containerdSocket + `"

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"

[plugins.'io.containerd.cri.v1.runtime']
  restrict_oom_score_adj = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = "{{RUNC}}"
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["/opt/cni/bin"]
    conf_dir = "/etc/cni/net.d"
    # No loopback plugin binary on the nodes: containerd brings lo up.
    use_internal_loopback = true
`

// kubeletConfig is a node's kubelet: cgroup v1 through cgroupfs under the
// node's own cgroupRoot, no oom_score_adj (no CAP_SYS_RESOURCE), no swap
// check, and the API server as its only client of note.
const kubeletConfig = `apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: {{CGROUP}}
oomScoreAdj: 0
failSwapOn: false
containerRuntimeEndpoint: unix://` + containerdSocket + `
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: false
authorization:
  mode: AlwaysAllow
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
clusterDomain: cluster.local
resolvConf: /etc/resolv.conf
# The lab's images are imported, never pulled, and must not be collected.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: "0%"
  nodefs.available: "0%"
  imagefs.available: "0%"
registerNode: true
`

// kubeProxyConfig is a node's kube-proxy in nftables mode (no IPVS in this
// kernel). conntrack limits stay as they are: nf_conntrack_max is not
// writable outside the initial namespace. Every Service connection is
// masqueraded, so the API server's relay on the underlay needs no route
// back to the pod network.
const kubeProxyConfig = `apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: nftables
hostnameOverride: {{NODE}}
clusterCIDR: {{CLUSTER}}
masqueradeAll: true
oomScoreAdj: 0
metricsBindAddress: 127.0.0.1:10249
clientConnection:
  kubeconfig: {{KUBECONFIG}}
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
`

func render(tmpl string, kv ...string) string { return strings.NewReplacer(kv...).Replace(tmpl) }

// startRealNode writes node n's configuration and starts its processes.
func (l *Lab) startRealNode(n Node) error {
	dir := l.nodeDir(n)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	base, err := labCgroup()
	if err != nil {
		return err
	}
	cgroup := filepath.Join(base, nodeCgroupPrefix+n.NS)
	if err := l.makeCgroup(cgroup); err != nil {
		return fmt.Errorf("node %s's cgroup: %w", n.NS, err)
	}
	runc, err := exec.LookPath("runc")
	if err != nil {
		return errors.New("runc not found: run `make node-deps` (Debian's runc)")
	}
	kc := filepath.Join(dir, "kubeconfig")
	if err := l.cp.kubeconfig(kc, fmt.Sprintf("https://127.0.0.1:%d", RelayPort), "lab-admin", l.cp.adminTok); err != nil {
		return err
	}
	files := map[string]string{
		"containerd.toml": render(containerdConfig, "{{RUNC}}", runc),
		"kubelet.yaml":    render(kubeletConfig, "{{CGROUP}}", cgroup),
		"kube-proxy.yaml": render(kubeProxyConfig, "{{NODE}}", n.Name, "{{CLUSTER}}", ClusterCIDR.String(), "{{KUBECONFIG}}", kc),
		"node.sh":         render(nodeScript, "{{TUNABLES}}", strings.Join(kernelTunables, " ")),
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			return err
		}
	}
	nsPath := filepath.Join("/var/run/netns", n.NS)
	if err := l.spawn("relay-"+n.NS, filepath.Join(l.cfg.Bin, "routemode-lab"), "relay",
		"--netns", nsPath, "--to", fmt.Sprintf("127.0.0.1:%d", l.cp.apiPort)); err != nil {
		return err
	}
	pid, err := l.spawnNode(n)
	if err != nil {
		return err
	}
	l.state.NodePIDs = append(l.state.NodePIDs, pid)
	return l.saveState()
}

// spawnNode starts node n's processes from the configuration in its
// directory and returns the process holding its namespaces.
func (l *Lab) spawnNode(n Node) (int, error) {
	nsPath := filepath.Join("/var/run/netns", n.NS)
	if err := l.spawn("node-"+n.NS, "nsenter", "--net="+nsPath, "--", "unshare", "-m", "--uts", "--propagation", "private", "--",
		"/bin/bash", filepath.Join(l.nodeDir(n), "node.sh"), l.nodeDir(n), n.Name, l.cfg.NodeBin, n.IP.String(), netlab.OutsideIP.String()); err != nil {
		return 0, err
	}
	// The supervised process holds the node's namespaces (nsenter and
	// unshare exec the script in place), not its supervisor, which stays
	// in the host's.
	var pid int
	err := wait(context.Background(), 30*time.Second, "node "+n.NS+"'s process to start", func() (bool, error) {
		var err error
		pid, err = l.supervisedPID("node-" + n.NS)
		return err == nil, err
	})
	return pid, err
}

// nodePID is the process holding node i's mount namespace.
func (l *Lab) nodePID(i int) int { return l.state.NodePIDs[i] }

// inNode runs a command in node i's namespaces, as its containerd sees the
// machine.
func (l *Lab) inNode(ctx context.Context, i int, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "nsenter", append([]string{"-t", strconv.Itoa(l.nodePID(i)), "-m", "-n", "-u", "--"}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("on %s: %s: %w: %s", l.Nodes[i].NS, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// Routemodectl runs routemodectl on node i, in its network and mount
// namespaces: its bpffs holds the agent's pins.
func (l *Lab) Routemodectl(ctx context.Context, i int, args ...string) (string, error) {
	return l.inNode(ctx, i, append([]string{filepath.Join(l.cfg.Bin, "routemodectl")}, args...)...)
}

// NodeRoot is node i's root directory as its containerd and kubelet see
// it (/etc/cni/net.d, /opt/cni/bin, /run, its bpffs), seen from the host.
func (l *Lab) NodeRoot(i int) string { return fmt.Sprintf("/proc/%d/root", l.nodePID(i)) }

// Load imports image archives into every node's containerd under the names
// they carry, as `kind load image-archive` does: pods then start from them
// without a registry (with imagePullPolicy IfNotPresent, the default for
// tagged images).
func (l *Lab) Load(ctx context.Context, archives ...string) error {
	if len(l.state.NodePIDs) == 0 {
		return errors.New("this lab has no real nodes to load images into (start it with `routemode-lab up --real-nodes`)")
	}
	for _, a := range archives {
		abs, err := filepath.Abs(a)
		if err != nil {
			return err
		}
		for i := range l.Nodes {
			if _, err := l.inNode(ctx, i, filepath.Join(l.cfg.NodeBin, "ctr"), "--address", containerdSocket,
				"-n", "k8s.io", "images", "import", abs); err != nil {
				return fmt.Errorf("loading %s: %w", a, err)
			}
		}
	}
	return nil
}

// stopRealNodes kills every process of the recorded nodes' namespaces,
// the namespaces' holders included. It scans until none is
// left: a containerd killed while starting a shim may have forked it
// after a scan, and a shim left running would have runc make the nodes'
// cgroups again after they are removed.
func stopRealNodes(pids []int) {
	nss := map[string]bool{}
	for _, pid := range pids {
		for _, ns := range nodeNamespaces(pid) {
			nss[ns] = true
		}
	}
	if len(nss) == 0 {
		return
	}
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		left := inNamespaces(nss)
		if len(left) == 0 {
			return
		}
		for _, p := range left {
			_ = syscall.Kill(p, syscall.SIGKILL)
		}
		waitGone(left, 5*time.Second)
	}
}

// inotifyPerNode is how many inotify instances one real node holds, as
// counted in this lab: the kubelet 5, containerd 2, kube-proxy 1 and the
// agent 1; inotifyControlPlane is kube-controller-manager's and the
// API server's.
const (
	inotifyPerNode      = 9
	inotifyControlPlane = 2
)

// checkInotify refuses to start nodes that would run out of inotify
// instances: fs.inotify.max_user_instances (128 on many hosts) counts
// every process of the user, other labs' included, and a kubelet or
// containerd without one fails in ways that do not say so. It counts the
// instances of every process, which errs on the safe side when other
// users hold some. The lab never raises the limit itself: that is the
// host's setting.
func checkInotify(nodes int) error {
	b, err := os.ReadFile("/proc/sys/fs/inotify/max_user_instances")
	if err != nil {
		return err
	}
	limit, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return err
	}
	used := 0
	fds, _ := filepath.Glob("/proc/[0-9]*/fd/*")
	for _, fd := range fds {
		if target, err := os.Readlink(fd); err == nil && target == "anon_inode:inotify" {
			used++
		}
	}
	need := nodes*inotifyPerNode + inotifyControlPlane
	if used+need > limit {
		return fmt.Errorf("%d real nodes need about %d inotify instances (%d each, %d for the control plane), but %d of fs.inotify.max_user_instances=%d are in use: "+
			"stop other labs, use fewer nodes, or raise the limit yourself (sysctl -w fs.inotify.max_user_instances=512); the lab does not change it",
			nodes, need, inotifyPerNode, inotifyControlPlane, used, limit)
	}
	return nil
}

// upReal brings up the real nodes once the API server runs, imports the
// pause and routemode images into them and installs routemode from
// config/default, unless Config.NoInstall leaves that to the caller.
func (l *Lab) upReal(ctx context.Context) error {
	if err := l.cp.startControllers(l); err != nil {
		return err
	}
	if err := l.buildNodes(); err != nil {
		return fmt.Errorf("building the nodes: %w", err)
	}
	// The kubernetes Service's endpoint, for pods: the underlay's own
	// address, relayed to the API server on the host's loopback.
	if err := l.spawn("relay-underlay", filepath.Join(l.cfg.Bin, "routemode-lab"), "relay",
		"--netns", filepath.Join("/var/run/netns", l.state.Underlay),
		"--listen", fmt.Sprintf("%s:%d", l.cp.advertise, l.cp.apiPort),
		"--to", fmt.Sprintf("127.0.0.1:%d", l.cp.apiPort)); err != nil {
		return err
	}
	for _, n := range l.Nodes {
		if err := l.startRealNode(n); err != nil {
			return fmt.Errorf("starting node %s: %w", n.NS, err)
		}
	}
	for i, n := range l.Nodes {
		if err := wait(ctx, 3*time.Minute, "containerd on "+n.NS, func() (bool, error) {
			_, err := l.inNode(ctx, i, filepath.Join(l.cfg.NodeBin, "ctr"), "--address", containerdSocket, "version")
			return err == nil, fmt.Errorf("%w (see %s)", err, l.path("logs", "node-"+n.NS+".log"))
		}); err != nil {
			return err
		}
	}
	if err := l.Load(ctx, append([]string{filepath.Join(l.cfg.NodeBin, "images", "pause.tar")}, l.cfg.Images...)...); err != nil {
		return err
	}
	if err := l.waitNodes(ctx); err != nil {
		return err
	}
	l.state.Nodes = l.Nodes
	if err := l.saveState(); err != nil || l.cfg.NoInstall {
		return err
	}
	if _, err := l.Kubectl("apply", "-k", filepath.Join(l.cfg.Root, "config", "default")); err != nil {
		return err
	}
	_, err := l.Kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/routingmodes.routemode.io", "crd/routingnodes.routemode.io")
	return err
}

// waitNodes waits until every kubelet registered its Node and the node
// IPAM gave it a podCIDR, which the lab then reports.
func (l *Lab) waitNodes(ctx context.Context) error {
	for i := range l.Nodes {
		if err := l.waitNode(ctx, i); err != nil {
			return err
		}
	}
	return nil
}

// waitNode waits until node i's kubelet registered its Node and the node
// IPAM gave it a podCIDR, which it records.
func (l *Lab) waitNode(ctx context.Context, i int) error {
	n := l.Nodes[i]
	return wait(ctx, 3*time.Minute, "node "+n.Name+" to register and get a podCIDR", func() (bool, error) {
		out, err := l.Kubectl("get", "node", n.Name, "-o", "jsonpath={.spec.podCIDR}")
		if err != nil || strings.TrimSpace(out) == "" {
			return false, fmt.Errorf("%v (see %s)", err, l.path("logs", "node-"+n.NS+".log"))
		}
		l.Nodes[i].PodCIDR, err = netip.ParsePrefix(strings.TrimSpace(out))
		return err == nil, err
	})
}

// WaitInstalled waits until the agent DaemonSet and the operator
// Deployment are rolled out and available.
func (l *Lab) WaitInstalled(limit time.Duration) error {
	for _, obj := range []string{"daemonset/routemode-agent", "deployment/routemode-operator"} {
		if _, err := l.Kubectl("-n", Namespace, "rollout", "status", obj, "--timeout="+limit.String()); err != nil {
			return err
		}
	}
	return nil
}

// Real says whether the lab runs real nodes.
func (l *Lab) Real() bool { return len(l.state.NodePIDs) > 0 }

// realPods is a DaemonSet of pause containers: one real pod per node,
// started by its kubelet through containerd and wired by routemode-cni. The
// lab's traffic runs its echo servers and probe streams inside their
// network namespaces, as it does in the lab's own pods.
const realPods = `apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: lab-pods
  namespace: default
spec:
  selector:
    matchLabels: {app: lab-pods}
  template:
    metadata:
      labels: {app: lab-pods}
    spec:
      terminationGracePeriodSeconds: 0
      containers:
      - name: pause
        image: ` + "{{PAUSE}}" + `
`

// pauseImage is the tag make node-bin gives the pause image (PAUSE_IMAGE
// in the Makefile), containerd's default sandbox image.
const pauseImage = "registry.k8s.io/pause:3.10.2"

// addRealPods runs realPods and records each pod with its network
// namespace, found through the node's mount namespace (/proc/PID/root) by
// the address on its eth0, then the Service workload (echo.go).
func (l *Lab) addRealPods(ctx context.Context) error {
	if err := l.applyRendered("lab-pods.yaml", realPods, "{{PAUSE}}", pauseImage); err != nil {
		return err
	}
	if _, err := l.Kubectl("rollout", "status", "daemonset/lab-pods", "--timeout=3m"); err != nil {
		return err
	}
	var err error
	if l.state.Pods, err = l.PodsOf(ctx, "app=lab-pods"); err != nil {
		return err
	}
	if err := l.saveState(); err != nil {
		return err
	}
	return l.addEcho(ctx)
}

// podNetns finds the network namespace containerd made on node i for the
// pod with address ip.
func (l *Lab) podNetns(ctx context.Context, i int, ip netip.Addr) (string, error) {
	dir := fmt.Sprintf("/proc/%d/root/run/netns", l.nodePID(i))
	entries, err := os.ReadDir(dir)
	if err != nil {
		return "", err
	}
	for _, e := range entries {
		p := filepath.Join(dir, e.Name())
		out, err := exec.CommandContext(ctx, "nsenter", "--net="+p, "--", "ip", "-4", "-o", "addr", "show", "dev", "eth0").Output()
		if err == nil && strings.Contains(string(out), " "+ip.String()+"/") {
			return p, nil
		}
	}
	return "", fmt.Errorf("no network namespace with %s in %s", ip, dir)
}

// RemoveRealNode takes node out of the cluster as a machine switched off
// and deleted from it: every process of the node is killed (containerd,
// the kubelet, kube-proxy and every container, its pods' network
// namespaces going with them), its underlay is cut and its Node object
// deleted. Its network namespace and its disk (containerd's and the
// kubelet's directories, /etc) stay, for AddRealNode; the lab's pods on it
// are dropped from the lab's list.
func (l *Lab) RemoveRealNode(ctx context.Context, node string) error {
	i, err := l.nodeIndex(node)
	if err != nil {
		return err
	}
	n := l.Nodes[i]
	// The node's process first loses its supervisor, or it would be
	// started again; it must still run for its namespaces to be found.
	if _, err := l.unsupervise("node-" + n.NS); err != nil {
		return err
	}
	stopRealNodes([]int{l.nodePID(i)})
	// Containers have namespaces of their own: the kubelet's cgroups,
	// below the node's, hold them. Those cgroups go too, as with a machine
	// switched off: a kubelet started on the node again would otherwise
	// take each for a container to watch and spend seconds on it before
	// registering its Node (50 s for one removed node's cgroups).
	var errs []error
	for _, d := range l.state.Cgroups {
		if filepath.Base(d) == nodeCgroupPrefix+n.NS {
			tree := killCgroupTree(d)
			for _, p := range slices.Backward(tree[1:]) {
				if err := rmdirWhenEmpty(p); err != nil {
					errs = append(errs, err)
				}
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if err := l.SetUnderlay(n.Name, false); err != nil {
		return err
	}
	cs, err := kubernetes.NewForConfig(l.cp.restConfig())
	if err != nil {
		return err
	}
	if err := cs.CoreV1().Nodes().Delete(ctx, n.Name, metav1.DeleteOptions{}); err != nil {
		return err
	}
	l.state.Pods = slices.DeleteFunc(l.state.Pods, func(p PodState) bool { return p.Node == n.Name })
	return l.saveState()
}

// AddRealNode brings back a node RemoveRealNode took out, as a machine
// that rebooted and joins again: its kernel state wiped (WipeNodeKernel),
// its underlay restored, its processes started on the disk it kept, and
// once its kubelet registered the Node and the node IPAM gave it a
// podCIDR (maybe not the one it had), that is recorded. Its pods come as
// their DaemonSets schedule them; RefreshPods records them.
func (l *Lab) AddRealNode(ctx context.Context, node string) error {
	i, err := l.nodeIndex(node)
	if err != nil {
		return err
	}
	n := l.Nodes[i]
	if err := l.WipeNodeKernel(n.Name); err != nil {
		return err
	}
	if err := l.SetUnderlay(n.Name, true); err != nil {
		return err
	}
	pid, err := l.spawnNode(n)
	if err != nil {
		return err
	}
	l.state.NodePIDs[i] = pid
	if err := l.saveState(); err != nil {
		return err
	}
	if err := l.waitNode(ctx, i); err != nil {
		return err
	}
	l.state.Nodes = l.Nodes
	return l.saveState()
}

// RefreshPods waits until the lab's pods run one on every node, their
// network namespaces found, and records them: a DaemonSet's status can say
// it is rolled out before its controller has seen a node that joined.
func (l *Lab) RefreshPods(ctx context.Context) error {
	if err := wait(ctx, 3*time.Minute, "a running lab pod on every node", func() (bool, error) {
		pods, err := l.PodsOf(ctx, "app=lab-pods")
		if err != nil {
			return false, err
		}
		on := map[string]bool{}
		for _, p := range pods {
			on[p.Node] = true
		}
		if len(pods) != len(l.Nodes) || len(on) != len(l.Nodes) {
			return false, fmt.Errorf("%d lab pods running, on %d of the %d nodes", len(pods), len(on), len(l.Nodes))
		}
		l.state.Pods = pods
		return true, nil
	}); err != nil {
		return err
	}
	return l.saveState()
}
