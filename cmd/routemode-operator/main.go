// Command routemode-operator reconciles the cluster's RoutingMode: it plans
// a mode change as a make-before-break rollout and drives it node by node
// through the RoutingNode objects the node agents apply.
package main

import (
	"flag"
	"fmt"
	"os"
	"time"

	rmscheme "github.com/routemode/routemode/internal/scheme"

	"go.uber.org/zap/zapcore"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/routemode/routemode/controllers/routingmode"
	"github.com/routemode/routemode/internal/metricsopts"
	"github.com/routemode/routemode/internal/readiness"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "routemode-operator:", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		metricsAddr    string
		metricsSecure  bool
		probeAddr      string
		pprofAddr      string
		leaderElect    bool
		leaderElectNS  string
		reconcileLimit time.Duration
		qps            float64
		burst          int
	)
	flag.StringVar(&metricsAddr, "metrics-bind-address", ":8443", "Address the Prometheus metrics endpoint binds to; 0 disables it.")
	metricsopts.SecureFlag(flag.CommandLine, &metricsSecure)
	flag.StringVar(&probeAddr, "health-probe-bind-address", ":8081", "Address the liveness and readiness probes bind to.")
	flag.StringVar(&pprofAddr, "pprof-bind-address", "0", "Address net/http/pprof binds to, for profiling a rollout (make bench-scale uses it); 0 disables it.")
	flag.BoolVar(&leaderElect, "leader-elect", true, "Elect a leader so that only one operator replica drives the rollout.")
	flag.StringVar(&leaderElectNS, "leader-election-namespace", "", "Namespace of the leader election lease (default: the operator's own namespace).")
	flag.DurationVar(&reconcileLimit, "reconcile-timeout", time.Minute, "Upper bound of one reconcile.")
	// A rollout writes about three steps per node; at client-go's default of
	// 5 QPS (controller-runtime's 20) a 5,000-node rollout would spend 12
	// minutes or more just waiting for its own rate limiter.
	flag.Float64Var(&qps, "kube-api-qps", 100, "Sustained requests per second to the API server; a rollout writes about 3 RoutingNode steps per node (15,000 at 5,000 nodes: 2.5 minutes at 100).")
	flag.IntVar(&burst, "kube-api-burst", 200, "Requests allowed in a burst above --kube-api-qps.")
	// Milliseconds and below: a datapath switch is over in milliseconds,
	// and its log lines are read against packet traces.
	opts := zap.Options{TimeEncoder: zapcore.RFC3339NanoTimeEncoder}
	opts.BindFlags(flag.CommandLine)
	flag.Parse()
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&opts)))

	scheme, err := rmscheme.New()
	if err != nil {
		return err
	}
	cfg, err := ctrl.GetConfig()
	if err != nil {
		return fmt.Errorf("finding the cluster (set --kubeconfig or KUBECONFIG): %w", err)
	}
	if qps <= 0 || burst < 1 {
		return fmt.Errorf("--kube-api-qps must be above 0 and --kube-api-burst at least 1, got %v and %d", qps, burst)
	}
	cfg.QPS, cfg.Burst = float32(qps), burst
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                  scheme,
		Metrics:                 metricsopts.Options(metricsAddr, metricsSecure),
		HealthProbeBindAddress:  probeAddr,
		PprofBindAddress:        pprofAddr,
		LeaderElection:          leaderElect,
		LeaderElectionID:        "routemode-operator.routemode.io",
		LeaderElectionNamespace: leaderElectNS,
		Cache:                   routingmode.CacheOptions(),
	})
	if err != nil {
		return fmt.Errorf("creating the manager: %w", err)
	}
	r := &routingmode.Reconciler{
		Client:   mgr.GetClient(),
		Recorder: mgr.GetEventRecorder("routemode-operator"),
		Now:      time.Now,
	}
	if err := r.SetupWithManager(mgr, controller.Options{ReconciliationTimeout: reconcileLimit}); err != nil {
		return fmt.Errorf("setting up the routingmode controller: %w", err)
	}
	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		return err
	}
	// Ready once the controllers read a synced view of the cluster.
	if err := mgr.AddReadyzCheck("informers", readiness.CacheSynced(mgr.GetCache())); err != nil {
		return err
	}
	return mgr.Start(ctrl.SetupSignalHandler())
}
