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
		leaderElect    bool
		leaderElectNS  string
		reconcileLimit time.Duration
	)
	flag.StringVar(&metricsAddr, "metrics-bind-address", ":8443", "Address the Prometheus metrics endpoint binds to; 0 disables it.")
	metricsopts.SecureFlag(flag.CommandLine, &metricsSecure)
	flag.StringVar(&probeAddr, "health-probe-bind-address", ":8081", "Address the liveness and readiness probes bind to.")
	flag.BoolVar(&leaderElect, "leader-elect", true, "Elect a leader so that only one operator replica drives the rollout.")
	flag.StringVar(&leaderElectNS, "leader-election-namespace", "", "Namespace of the leader election lease (default: the operator's own namespace).")
	flag.DurationVar(&reconcileLimit, "reconcile-timeout", time.Minute, "Upper bound of one reconcile.")
	opts := zap.Options{}
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
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                  scheme,
		Metrics:                 metricsopts.Options(metricsAddr, metricsSecure),
		HealthProbeBindAddress:  probeAddr,
		LeaderElection:          leaderElect,
		LeaderElectionID:        "routemode-operator.routemode.io",
		LeaderElectionNamespace: leaderElectNS,
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
