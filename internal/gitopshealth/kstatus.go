package gitopshealth

import (
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

// Kstatus is what Flux's wait and healthChecks (and kubectl-style tools
// built on cli-utils) compute for obj.
func Kstatus(obj map[string]any) (*status.Result, error) {
	return status.Compute(&unstructured.Unstructured{Object: obj})
}
