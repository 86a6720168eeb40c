// Package readiness holds readiness checks for the managers' /readyz.
package readiness

import (
	"context"
	"errors"
	"net/http"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
)

// CacheSynced is ready once every informer of c has synced: until then the
// controllers would reconcile from a partial view of the cluster (a
// RoutingMode without its RoutingNodes), so the pod must not count as
// ready. It answers within syncWait, without waiting for the sync.
func CacheSynced(c cache.Cache) healthz.Checker {
	return func(req *http.Request) error {
		// Not a context cancelled up front: WaitForCacheSync first selects
		// between "started" and the context's end, and with both ready Go
		// picks one at random, so a started, synced cache answered not
		// ready to every other probe (the operator's pods flapped between
		// ready and not, and one restarted stayed not ready for minutes).
		ctx, cancel := context.WithTimeout(req.Context(), syncWait)
		defer cancel()
		if !c.WaitForCacheSync(ctx) {
			return errors.New("the informer caches have not synced with the API server yet")
		}
		return nil
	}
}

// syncWait bounds a readiness answer, well inside the kubelet's 1 s
// default probe timeout: a synced cache answers at once, one not started
// or not synced after it.
const syncWait = 200 * time.Millisecond
