// Package scheme is the runtime.Scheme routemode's binaries and tests share:
// Kubernetes' built-in types and routemode.io/v1alpha1.
package scheme

import (
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"

	"github.com/routemode/routemode/api/v1alpha1"
)

// New returns a scheme with the built-in types and routemode's.
func New() (*runtime.Scheme, error) {
	s := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
		return nil, err
	}
	if err := v1alpha1.AddToScheme(s); err != nil {
		return nil, err
	}
	return s, nil
}
