package config_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/routemode/routemode/internal/metricsopts"
)

// TestMetricsNeedAuthorizedToken serves metrics as the operator and as the
// agent do (metricsopts.Options, secure), with the API server's identity
// of each service account and config/default applied, and scrapes them:
// without a token, with a token of an account that is not a metrics
// reader, and with one bound to routemode-metrics-reader. Only the last
// gets the metrics, which also proves config/rbac grants each service
// account the TokenReviews and SubjectAccessReviews serving needs.
func TestMetricsNeedAuthorizedToken(t *testing.T) {
	c := installed(t)
	ctx := t.Context()
	cs, err := kubernetes.NewForConfig(c.cfg)
	if err != nil {
		t.Fatal(err)
	}
	scraper := serviceAccountToken(t, cs, "metrics-scraper")
	stranger := serviceAccountToken(t, cs, "metrics-stranger")
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "metrics-scraper"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "routemode-metrics-reader"},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: "metrics-scraper", Namespace: namespace}},
	}
	if _, err := cs.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cs.RbacV1().ClusterRoleBindings().Delete(context.Background(), binding.Name, metav1.DeleteOptions{})
	})

	for _, sa := range []string{"routemode-operator", "routemode-agent"} {
		t.Run(sa, func(t *testing.T) {
			url := serveMetrics(t, c.cfg, sa)
			for _, tc := range []struct {
				name, token string
				want        int
			}{
				{"no token", "", http.StatusUnauthorized},
				{"not a metrics reader", stranger, http.StatusForbidden},
				{"metrics reader", scraper, http.StatusOK},
			} {
				// The new binding and the server's own RBAC reach the
				// authorizer asynchronously.
				eventually(t, settle, tc.name, func(ctx context.Context) error {
					got, err := scrape(ctx, url, tc.token)
					if err != nil {
						return err
					}
					if got != tc.want {
						return fmt.Errorf("%s: HTTP %d, want %d", tc.name, got, tc.want)
					}
					return nil
				})
			}
		})
	}
}

// serviceAccountToken creates service account name and returns a token for
// it from the TokenRequest API, as a projected token volume would hold.
func serviceAccountToken(t *testing.T, cs kubernetes.Interface, name string) string {
	t.Helper()
	ctx := t.Context()
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace}}
	if _, err := cs.CoreV1().ServiceAccounts(namespace).Create(ctx, sa, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cs.CoreV1().ServiceAccounts(namespace).Delete(context.Background(), name, metav1.DeleteOptions{})
	})
	tr, err := cs.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, name, &authenticationv1.TokenRequest{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("token for %s: %v", name, err)
	}
	return tr.Status.Token
}

// serveMetrics starts the metrics server sa's process would run, talking
// to the API server as sa, on a free loopback port, and returns its URL.
func serveMetrics(t *testing.T, base *rest.Config, sa string) string {
	t.Helper()
	cfg := rest.CopyConfig(base)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: "system:serviceaccount:" + namespace + ":" + sa, Groups: saGroups}
	hc, err := rest.HTTPClientFor(cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := metricsserver.NewServer(metricsopts.Options("127.0.0.1:0", true), cfg, hc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Start(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("metrics server: %v", err)
		}
	})
	// The listener's address, known once Start bound it.
	bound, ok := srv.(interface{ GetBindAddr() string })
	if !ok {
		t.Fatalf("%T does not report its address", srv)
	}
	var addr string
	eventually(t, 10*time.Second, "the metrics server to listen", func(context.Context) error {
		if addr = bound.GetBindAddr(); addr == "" {
			return fmt.Errorf("not listening yet")
		}
		return nil
	})
	return "https://" + addr + "/metrics"
}

// scrape GETs url with token as Prometheus would and returns the status.
// The certificate is the server's self-signed one: this checks who may
// read, not the certificate's chain.
func scrape(ctx context.Context, url, token string) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // self-signed test server
	}}
	resp, err := client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, nil
}
