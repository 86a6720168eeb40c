// Package readiness holds readiness checks for the managers' /readyz.
package readiness

import (
	"context"
	"errors"
	"net/http"

	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
)

// CacheSynced is ready once every informer of c has synced: until then the
// controllers would reconcile from a partial view of the cluster (a
// RoutingMode without its RoutingNodes), so the pod must not count as
// ready. It answers at once, without waiting for the sync.
func CacheSynced(c cache.Cache) healthz.Checker {
	return func(req *http.Request) error {
		ctx, cancel := context.WithCancel(req.Context())
		cancel() // report the state now; WaitForCacheSync checks once before giving up
		if !c.WaitForCacheSync(ctx) {
			return errors.New("the informer caches have not synced with the API server yet")
		}
		return nil
	}
}
