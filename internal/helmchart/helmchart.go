// Package helmchart renders, installs, upgrades and uninstalls routemode's
// Helm chart (charts/routemode) with Helm's Go SDK, as `helm template`,
// `helm install`, `helm upgrade` and `helm uninstall` would: the chart's
// tests and the real-node lab use it, so no helm binary is needed.
package helmchart

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"helm.sh/helm/v4/pkg/action"
	"helm.sh/helm/v4/pkg/chart/common"
	chart "helm.sh/helm/v4/pkg/chart/v2"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	"helm.sh/helm/v4/pkg/kube"
	releasei "helm.sh/helm/v4/pkg/release"
	release "helm.sh/helm/v4/pkg/release/v1"
	"k8s.io/cli-runtime/pkg/genericclioptions"
)

// ReleaseName is the release the tests and the lab install: a cluster has
// one routemode, like one RoutingMode.
const ReleaseName = "routemode"

// KubeVersion is the Kubernetes release Render renders for, without a
// cluster to ask: the one the project's tests run (the Makefile's
// K8S_VERSION). Helm's own default, 1.20, is older than the chart's
// kubeVersion allows.
const KubeVersion = "v1.37.2"

// Load reads the chart from charts/routemode below the repository root.
func Load(root string) (*chart.Chart, error) {
	ch, err := loader.LoadDir(filepath.Join(root, "charts", "routemode"))
	if err != nil {
		return nil, fmt.Errorf("loading charts/routemode: %w", err)
	}
	return ch, nil
}

// Render is `helm template --include-crds`: the manifest for values, with
// no cluster, after the values schema and the templates' checks.
func Render(ch *chart.Chart, namespace string, values map[string]any) (string, error) {
	in := action.NewInstall(action.NewConfiguration())
	in.DryRunStrategy = action.DryRunClient
	in.ReleaseName = ReleaseName
	in.Namespace = namespace
	in.IncludeCRDs = true
	kv, err := common.ParseKubeVersion(KubeVersion)
	if err != nil {
		return "", err
	}
	in.KubeVersion = kv
	rel, err := in.Run(ch, values)
	if err != nil {
		return "", err
	}
	r, err := v1(rel)
	if err != nil {
		return "", err
	}
	return r.Manifest, nil
}

// Cluster is Helm's client for one cluster and the release's namespace.
type Cluster struct {
	cfg       *action.Configuration
	namespace string
}

// Connect is Helm's client for the cluster in kubeconfig; releases are kept
// as Secrets in namespace, as helm does by default.
func Connect(kubeconfig, namespace string) (*Cluster, error) {
	flags := genericclioptions.NewConfigFlags(false)
	flags.KubeConfig = &kubeconfig
	flags.Namespace = &namespace
	cfg := action.NewConfiguration()
	if err := cfg.Init(flags, namespace, "secret"); err != nil {
		return nil, fmt.Errorf("helm client for %s: %w", kubeconfig, err)
	}
	return &Cluster{cfg: cfg, namespace: namespace}, nil
}

// Install is `helm install routemode charts/routemode -n NAMESPACE
// --create-namespace`: the CRDs first (crds/), then everything else. With
// wait > 0 it returns once Helm's status watcher sees every object current,
// as `--wait` does.
func (c *Cluster) Install(ctx context.Context, ch *chart.Chart, values map[string]any, wait time.Duration) (*release.Release, error) {
	// Helm installs crds/ before it checks the values, so bad values would
	// leave CRDs behind; rendering first refuses them with nothing changed.
	if _, err := Render(ch, c.namespace, values); err != nil {
		return nil, fmt.Errorf("helm install: %w", err)
	}
	in := action.NewInstall(c.cfg)
	in.ReleaseName = ReleaseName
	in.Namespace = c.namespace
	in.CreateNamespace = true
	in.WaitStrategy, in.Timeout = strategy(wait)
	rel, err := in.RunWithContext(ctx, ch, values)
	if err != nil {
		return nil, fmt.Errorf("helm install: %w", err)
	}
	return v1(rel)
}

// Upgrade is `helm upgrade routemode charts/routemode` with values replacing
// the release's: new routing values switch the cluster live.
func (c *Cluster) Upgrade(ctx context.Context, ch *chart.Chart, values map[string]any, wait time.Duration) (*release.Release, error) {
	up := action.NewUpgrade(c.cfg)
	up.Namespace = c.namespace
	// The helm CLI's --history-max default: the SDK's 0 keeps every
	// revision's Secret for ever.
	up.MaxHistory = 10
	up.WaitStrategy, up.Timeout = strategy(wait)
	rel, err := up.RunWithContext(ctx, ReleaseName, ch, values)
	if err != nil {
		return nil, fmt.Errorf("helm upgrade: %w", err)
	}
	return v1(rel)
}

// Uninstall is `helm uninstall routemode`; with wait > 0 it returns once
// the release's objects are gone. The CRDs stay, as Helm leaves what
// crds/ installed.
func (c *Cluster) Uninstall(wait time.Duration) error {
	un := action.NewUninstall(c.cfg)
	un.WaitStrategy, un.Timeout = strategy(wait)
	if _, err := un.Run(ReleaseName); err != nil {
		return fmt.Errorf("helm uninstall: %w", err)
	}
	return nil
}

// strategy is what `--wait --timeout` set: Helm's status watcher (kstatus)
// for wait > 0, else no waiting beyond hooks.
func strategy(wait time.Duration) (kube.WaitStrategy, time.Duration) {
	if wait > 0 {
		return kube.StatusWatcherStrategy, wait
	}
	return kube.HookOnlyStrategy, 0
}

func v1(rel releasei.Releaser) (*release.Release, error) {
	r, ok := rel.(*release.Release)
	if !ok {
		return nil, errors.New("helm returned a release that is not a v1 release")
	}
	return r, nil
}
