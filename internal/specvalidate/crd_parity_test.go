package specvalidate

import (
	"context"
	"fmt"
	"testing"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/routemode/routemode/api/v1alpha1"
	"github.com/routemode/routemode/internal/testenv"
)

var env testenv.Lazy

func TestMain(m *testing.M) { env.Main(m) }

// TestCRDParity creates every spec of specCases on a real API server with
// the generated CRD and checks the server agrees with Validate: if the CRD
// markers change and Validate does not, this fails.
func TestCRDParity(t *testing.T) {
	e := env.Get(t)
	ctx := context.Background()
	for name, tc := range specCases() {
		t.Run(name, func(t *testing.T) {
			rm := &v1alpha1.RoutingMode{
				ObjectMeta: metav1.ObjectMeta{Name: v1alpha1.RoutingModeName},
				Spec:       tc.spec,
			}
			// Dry run: the server validates fully but stores nothing, so
			// the cases need no cleanup and can share the name "default".
			err := e.Client.Create(ctx, rm, client.DryRunAll)
			serverOK := err == nil
			if err != nil && !apierrors.IsInvalid(err) {
				t.Fatalf("unexpected API error: %v", err)
			}
			localErr := Validate(tc.spec)
			if serverOK != (localErr == nil) {
				t.Fatalf("API server and Validate disagree:\n server: %v\n local:  %v", errString(err), errString(localErr))
			}
		})
	}
}

func errString(err error) string {
	if err == nil {
		return "accepted"
	}
	return fmt.Sprintf("refused: %v", err)
}
