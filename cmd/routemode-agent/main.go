// Command routemode-agent is routemode's node agent. It runs in the node's
// network namespace (a hostNetwork DaemonSet pod, or `ip netns exec node-1
// routemode-agent ...` in the lab), makes the node's kernel match its
// RoutingNode spec (see agent/node) and reports status.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"syscall"
	"time"

	rmscheme "github.com/routemode/routemode/internal/scheme"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"go.uber.org/zap/zapcore"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client/config"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	"github.com/routemode/routemode/agent/bpfhost"
	agentcontroller "github.com/routemode/routemode/agent/controller"
	"github.com/routemode/routemode/agent/hostrouting"
	"github.com/routemode/routemode/agent/nlsafe"
	"github.com/routemode/routemode/agent/node"
	"github.com/routemode/routemode/agent/nsutil"
	"github.com/routemode/routemode/internal/metricsopts"
)

type options struct {
	nodeName       string
	underlay       string
	cniConfDir     string
	cniBinDir      string
	stateDir       string
	healthNS       string
	resync         time.Duration
	probeBudget    int
	metricsAddr    string
	metricsSecure  bool
	probeAddr      string
	legacyOnly     bool
	installCNIFrom string
	procSys        string
}

// init locks the main goroutine to the main thread for the process's life,
// so no other goroutine ever runs there. The agent enters other network
// namespaces (the health endpoint's, scratch ones for probing) on
// goroutines that lock their thread and never unlock it, so that Go
// discards the thread afterwards; but Go cannot discard the main thread,
// and one such goroutine scheduled there would leave it parked for good in
// the foreign namespace. /proc/<pid>/ns/net is the main thread's, and it is
// what `nsenter -t <agent pid> -n` enters to debug a node.
func init() { runtime.LockOSThread() }

func main() {
	var o options
	fs := flag.CommandLine
	fs.StringVar(&o.nodeName, "node-name", os.Getenv("NODE_NAME"), "name of this node's Node and RoutingNode (default $NODE_NAME)")
	fs.StringVar(&o.underlay, "underlay-device", "", "device towards the other nodes (default: the device holding the node's InternalIP)")
	fs.StringVar(&o.cniConfDir, "cni-conf-dir", "/etc/cni/net.d", "directory the CNI configuration is written to")
	fs.StringVar(&o.cniBinDir, "cni-bin-dir", "/opt/cni/bin", "directory the routemode-cni plugin is installed into (see --install-cni-from)")
	fs.StringVar(&o.installCNIFrom, "install-cni-from", "", "routemode-cni binary to copy into --cni-bin-dir at start (default: next to this binary, if present)")
	fs.StringVar(&o.stateDir, "state-dir", "/var/run/routemode", "agent state: saved sysctls, endpoint records (endpoints/), address allocations (ipam/)")
	fs.StringVar(&o.healthNS, "health-netns", "", "name of the health endpoint's network namespace (default rmhealth-<node>)")
	fs.DurationVar(&o.resync, "resync-period", 10*time.Second, "how often the node is reconciled without any event")
	fs.IntVar(&o.probeBudget, "probe-peers-per-resync", node.DefaultProbeBudget, "peers probed per reconcile in steady state, in rotation (every peer is probed whenever the node's datapath changes); 0 means the default, -1 probes every peer every time")
	fs.StringVar(&o.metricsAddr, "metrics-bind-address", "0", "metrics endpoint address, also serving the full peer table on /peers (routemodectl status --node NODE --peers); 0 to disable both")
	metricsopts.SecureFlag(fs, &o.metricsSecure)
	fs.StringVar(&o.probeAddr, "health-probe-bind-address", ":9879", "liveness and readiness endpoint address")
	fs.BoolVar(&o.legacyOnly, "legacy-host-routing-only", false, "never load eBPF host routing programs: hostRouting bpf is refused for this node, and programs an earlier run attached are detached")
	fs.StringVar(&o.procSys, "proc-sys", nsutil.DefaultProcSys, "where to write sysctls; in a container whose /proc/sys is read-only, the host's /proc/sys/net mounted elsewhere (the DaemonSet uses /host/proc/sys)")
	config.RegisterFlags(fs) // --kubeconfig
	// Milliseconds and below: a datapath switch is over in milliseconds,
	// and its log lines are read against packet traces.
	zopts := zap.Options{TimeEncoder: zapcore.RFC3339NanoTimeEncoder}
	zopts.BindFlags(fs)
	flag.Parse()
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&zopts)))
	if err := run(o); err != nil {
		ctrl.Log.Error(err, "Agent failed")
		os.Exit(1)
	}
}

func run(o options) error {
	log := ctrl.Log.WithName("agent").WithValues("node", o.nodeName)
	if o.nodeName == "" {
		return fmt.Errorf("--node-name (or $NODE_NAME) is required")
	}
	if err := installCNI(o); err != nil {
		return fmt.Errorf("installing the CNI plugin: %w", err)
	}
	nodeNS, err := ns.GetCurrentNS()
	if err != nil {
		return err
	}
	defer nodeNS.Close()
	h, err := netlink.NewHandle()
	if err != nil {
		return err
	}
	defer h.Close()

	// Even a legacy-only agent takes over the pins: it must detach the
	// programs an earlier run of the agent left attached.
	handle := nlsafe.Wrap(h)
	hrOpts := hostrouting.Options{Handle: handle, Logger: log.WithName("hostrouting")}
	if o.legacyOnly {
		hrOpts.Disabled = "the agent runs with --legacy-host-routing-only"
	}
	pinDir := hostrouting.DefaultPinDir(o.nodeName)
	hostRouter := bpfhost.New(pinDir, hrOpts)
	defer hostRouter.Close()
	// The programs' counters, read from the pins at every scrape.
	ctrlmetrics.Registry.MustRegister(hostrouting.NewCollector(o.nodeName, pinDir))
	agent, err := node.New(node.Config{
		NodeName:       o.nodeName,
		NodeNS:         nodeNS,
		Handle:         handle,
		UnderlayDevice: o.underlay,
		ProcSys:        o.procSys,
		StateDir:       o.stateDir,
		CNIConfDir:     o.cniConfDir,
		HealthNS:       o.healthNS,
		HostRouter:     hostRouter,
		ResyncPeriod:   o.resync,
		ProbeBudget:    o.probeBudget,
		Log:            log,
	})
	if err != nil {
		return err
	}
	defer agent.Close()

	scheme, err := rmscheme.New()
	if err != nil {
		return err
	}
	cfg, err := config.GetConfig()
	if err != nil {
		return err
	}
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                 scheme,
		Metrics:                metricsopts.Options(o.metricsAddr, o.metricsSecure),
		HealthProbeBindAddress: o.probeAddr,
		LeaderElection:         false,
		Cache:                  agentcontroller.CacheOptions(o.nodeName),
	})
	if err != nil {
		return err
	}
	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		return err
	}
	// The full peer table, beside the metrics (see agentcontroller.PeersPath).
	if err := mgr.AddMetricsServerExtraHandler(agentcontroller.PeersPath, agentcontroller.PeerTableHandler(agent.PeerTable)); err != nil {
		return err
	}
	// The same table on a local socket, for kubectl exec (see
	// agentcontroller.SocketName).
	socket := filepath.Join(o.stateDir, agentcontroller.SocketName)
	if err := mgr.Add(manager.RunnableFunc(func(ctx context.Context) error {
		// Not worth stopping the agent for: the metrics port serves it too.
		if err := agentcontroller.ServePeersSocket(ctx, socket, agent.PeerTable); err != nil {
			log.Error(err, "Failed to serve the peer table on the local socket", "socket", socket)
		}
		return nil
	})); err != nil {
		return err
	}
	kernel := make(chan event.GenericEvent, 1)
	r := &agentcontroller.Reconciler{Client: mgr.GetClient(), NodeName: o.nodeName, Agent: agent, Kernel: kernel}
	if err := r.SetupWithManager(mgr, controller.Options{MaxConcurrentReconciles: 1}); err != nil {
		return err
	}
	// Ready once the node's datapath matches its RoutingNode's generation.
	if err := mgr.AddReadyzCheck("datapath", r.Ready); err != nil {
		return err
	}

	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer cancel()
	go func() {
		if err := agentcontroller.WatchLinks(ctx, netns.None(), o.underlay, kernel, log); err != nil {
			log.Error(err, "Failed to watch links; relying on the periodic resync")
		}
	}()
	go func() {
		if err := agentcontroller.WatchRoutes(ctx, netns.None(), kernel, log); err != nil {
			log.Error(err, "Failed to watch routes; a deleted pod route waits for the periodic resync")
		}
	}()
	go func() {
		if err := agentcontroller.WatchEndpoints(ctx, agent.Endpoints().Dir, kernel, log); err != nil {
			log.Error(err, "Failed to watch endpoint records; new pods wait for the periodic resync")
		}
	}()
	log.Info("Started agent", "stateDir", o.stateDir, "cniConfDir", o.cniConfDir, "resync", o.resync)
	return mgr.Start(ctx)
}
