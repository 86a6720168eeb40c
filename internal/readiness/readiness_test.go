package readiness

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/cache"

	"github.com/routemode/routemode/api/v1alpha1"
	"github.com/routemode/routemode/internal/testenv"
)

var env testenv.Lazy

func TestMain(m *testing.M) { env.Main(m) }

// TestCacheSynced checks the operator's readiness against a real API
// server: not ready before the cache runs, ready once it has synced.
func TestCacheSynced(t *testing.T) {
	e := env.Get(t)
	c, err := cache.New(e.Config, cache.Options{Scheme: e.Client.Scheme()})
	if err != nil {
		t.Fatal(err)
	}
	// An informer, as the controllers' watches make one.
	if _, err := c.GetInformer(t.Context(), &v1alpha1.RoutingNode{}); err != nil {
		t.Fatal(err)
	}
	check := CacheSynced(c)
	probe := httptest.NewRequest(http.MethodGet, "/readyz", nil)
	if err := check(probe); err == nil {
		t.Fatal("ready before the cache started")
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Start(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	if err := wait.PollUntilContextTimeout(t.Context(), 50*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		return check(probe) == nil, nil
	}); err != nil {
		t.Fatalf("not ready 30s after the cache started: %v", check(probe))
	}
	// Once synced, every probe answers ready: a check that chose at random
	// between "started" and its own deadline failed half of them.
	for i := range 200 {
		if err := check(probe); err != nil {
			t.Fatalf("probe %d after the sync: %v", i, err)
		}
	}
}
