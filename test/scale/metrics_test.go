package scale

import "testing"

// TestOperatorMetricsRead reads what the operator exports the way the
// benchmark reports it: requests by method and the p99 bucket.
func TestOperatorMetricsRead(t *testing.T) {
	const m = `# HELP rest_client_requests_total x
rest_client_requests_total{code="200",host="127.0.0.1:1",method="GET"} 12
rest_client_requests_total{code="200",host="127.0.0.1:1",method="PATCH"} 3
rest_client_requests_total{code="409",host="127.0.0.1:1",method="PATCH"} 2
controller_runtime_reconcile_time_seconds_bucket{controller="routingmode",le="0.5"} 90
controller_runtime_reconcile_time_seconds_bucket{controller="routingmode",le="1"} 99
controller_runtime_reconcile_time_seconds_bucket{controller="routingmode",le="+Inf"} 100
controller_runtime_reconcile_time_seconds_bucket{controller="other",le="0.5"} 1
`
	if got, want := requests(m), "GET 12, PATCH 5"; got != want {
		t.Errorf("requests = %q, want %q", got, want)
	}
	if got := reconcileP99(m); got != 1 {
		t.Errorf("p99 bucket = %v, want 1", got)
	}
	if got := reconcileP99("no metrics\n"); got != -1 {
		t.Errorf("p99 of nothing = %v, want -1", got)
	}
}
