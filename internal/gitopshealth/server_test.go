package gitopshealth

import (
	"context"
	"fmt"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/routemode/routemode/api/v1alpha1"
	"github.com/routemode/routemode/internal/testenv"
)

var env testenv.Lazy

func TestMain(m *testing.M) { env.Main(m) }

// TestFixturesThroughAPIServer stores every fixture in a real API server
// (spec, then enough spec edits to reach the fixture's generation, then
// status through the status subresource) and runs the Lua script and
// kstatus on the object the server returns. This proves the fixtures are
// objects the CRD accepts, with nothing pruned, and that both checks read
// the server's own encoding (int64 generations, defaulted fields).
func TestFixturesThroughAPIServer(t *testing.T) {
	e := env.Get(t)
	ctx := context.Background()
	script := readScript(t)
	for name, tc := range fixtures {
		t.Run(name, func(t *testing.T) {
			want := loadFixture(t, name)
			obj := &unstructured.Unstructured{Object: map[string]any{
				"apiVersion": want["apiVersion"], "kind": want["kind"],
				"metadata": map[string]any{"name": v1alpha1.RoutingModeName},
				"spec":     want["spec"],
			}}
			if err := e.Client.Create(ctx, obj); err != nil {
				t.Fatalf("the API server refused the fixture's spec: %v", err)
			}
			t.Cleanup(func() { _ = e.Client.Delete(context.Background(), obj) })

			gen, _, _ := unstructured.NestedInt64(want, "metadata", "generation")
			for i := int64(1); obj.GetGeneration() < gen; i++ {
				// Each spec change bumps metadata.generation by one.
				_ = unstructured.SetNestedField(obj.Object, fmt.Sprintf("%ds", 100+i), "spec", "rollout", "healthCheckTimeout")
				if err := e.Client.Update(ctx, obj); err != nil {
					t.Fatal(err)
				}
			}
			if st, ok := want["status"]; ok {
				obj.Object["status"] = st
				if err := e.Client.Status().Update(ctx, obj); err != nil {
					t.Fatalf("the API server refused the fixture's status: %v", err)
				}
			}
			got := &unstructured.Unstructured{}
			got.SetGroupVersionKind(obj.GroupVersionKind())
			if err := e.Client.Get(ctx, client.ObjectKeyFromObject(obj), got); err != nil {
				t.Fatal(err)
			}
			if got.GetGeneration() != gen {
				t.Fatalf("generation %d, want %d", got.GetGeneration(), gen)
			}
			if st, ok := want["status"].(map[string]any); ok {
				gotConds, _, _ := unstructured.NestedSlice(got.Object, "status", "conditions")
				wantConds, _ := st["conditions"].([]any)
				if len(gotConds) != len(wantConds) {
					t.Errorf("server kept %d conditions of %d", len(gotConds), len(wantConds))
				}
			}

			h, err := EvalArgoHealth(script, got.Object)
			if err != nil {
				t.Fatal(err)
			}
			if h.Status != tc.argo {
				t.Errorf("Argo CD: %s (%s), want %s", h.Status, h.Message, tc.argo)
			}
			k, err := Kstatus(got.Object)
			if err != nil {
				t.Fatal(err)
			}
			if k.Status != tc.kstatus {
				t.Errorf("kstatus: %s (%s), want %s", k.Status, k.Message, tc.kstatus)
			}
		})
	}
}
