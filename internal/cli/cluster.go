package cli

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/routemode/routemode/api/v1alpha1"
)

func newScheme() (*runtime.Scheme, error) {
	s := runtime.NewScheme()
	if err := corev1.AddToScheme(s); err != nil {
		return nil, err
	}
	if err := v1alpha1.AddToScheme(s); err != nil {
		return nil, err
	}
	return s, nil
}

// client connects to the cluster chosen by --kubeconfig and --context, the
// way kubectl does ($KUBECONFIG, then ~/.kube/config).
func (g *globalOptions) client() (client.Client, string, error) {
	cfg, err := g.restConfig()
	if err != nil {
		return nil, "", err
	}
	scheme, err := newScheme()
	if err != nil {
		return nil, "", err
	}
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		return nil, "", fmt.Errorf("cannot create a client for %s: %w", cfg.Host, err)
	}
	return c, cfg.Host, nil
}

// restConfig loads the kubeconfig chosen by --kubeconfig and --context.
func (g *globalOptions) restConfig() (*rest.Config, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = g.kubeconfig
	cc := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{CurrentContext: g.context})
	cfg, err := cc.ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("cannot load a kubeconfig: %w; pass --kubeconfig FILE or set KUBECONFIG (and --context to pick a context)", err)
	}
	cfg.UserAgent = "routemodectl"
	return cfg, nil
}

// getRoutingMode reads the cluster's RoutingMode and turns the usual
// failures into errors that say what to do.
func getRoutingMode(ctx context.Context, c client.Client, host string) (*v1alpha1.RoutingMode, error) {
	var rm v1alpha1.RoutingMode
	err := c.Get(ctx, client.ObjectKey{Name: v1alpha1.RoutingModeName}, &rm)
	if err != nil {
		return nil, explainGetError(err, host)
	}
	return &rm, nil
}

func explainGetError(err error, host string) error {
	switch {
	case apierrors.IsNotFound(err):
		return fmt.Errorf("no RoutingMode named %s: apply one with kubectl apply -f config/samples/tunnel.yaml, or create it from Cilium's settings with routemodectl import cilium-config | kubectl apply -f -", v1alpha1.RoutingModeName)
	case meta.IsNoMatchError(err):
		return fmt.Errorf("the cluster at %s has no RoutingMode API: install routemode first (kubectl apply -f config/crd/bases)", host)
	case apierrors.IsForbidden(err):
		return fmt.Errorf("not allowed: %w; ask for read access to routingmodes and routingnodes.routemode.io", err)
	default:
		return fmt.Errorf("cannot read from the cluster at %s: %w; check --kubeconfig and --context", host, err)
	}
}
