// Package metricsopts serves the operator's and the agent's metrics the way
// kubebuilder projects do: HTTPS, with every request authenticated
// (TokenReview) and authorized (SubjectAccessReview of GET on the path) by
// the API server, so a scraper needs a token whose account may get
// /metrics (the routemode-metrics-reader ClusterRole in config/rbac).
// Plain HTTP, open to anyone who can connect, only where --metrics-secure
// is false: the lab, which scrapes from inside a node's namespace.
package metricsopts

import (
	"crypto/tls"
	"flag"

	"sigs.k8s.io/controller-runtime/pkg/metrics/filters"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
)

// SecureFlag registers --metrics-secure on fs, stored in p.
func SecureFlag(fs *flag.FlagSet, p *bool) {
	fs.BoolVar(p, "metrics-secure", true,
		"serve metrics over HTTPS, each request authenticated and authorized by the API server (scrapers need get on /metrics, e.g. the routemode-metrics-reader ClusterRole); false serves plain HTTP to anyone who can connect")
}

// Options are the metrics server's options for bindAddress ("0" disables
// it). With secure, the certificate is the one in CertDir when mounted
// there, else self-signed, as controller-runtime does.
func Options(bindAddress string, secure bool) metricsserver.Options {
	o := metricsserver.Options{BindAddress: bindAddress}
	if !secure {
		return o
	}
	o.SecureServing = true
	o.FilterProvider = filters.WithAuthenticationAndAuthorization
	// HTTP/1.1 only, as kubebuilder's scaffold: HTTP/2 Rapid Reset
	// (CVE-2023-44487) and Stream Cancellation (CVE-2023-39325).
	o.TLSOpts = []func(*tls.Config){func(c *tls.Config) { c.NextProtos = []string{"http/1.1"} }}
	return o
}
