package config_test

import (
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// kustomizations are the directories under config/ with a kustomization.yaml.
func kustomizations(t *testing.T) []string {
	t.Helper()
	var dirs []string
	err := filepath.WalkDir(filepath.Join(root, "config"), func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && d.Name() == "kustomization.yaml" {
			rel, err := filepath.Rel(root, filepath.Dir(path))
			if err != nil {
				return err
			}
			dirs = append(dirs, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return dirs
}

// manifestFiles are the YAML files under config/ that hold Kubernetes
// objects, relative to the repository root: everything except the
// kustomization files, the invalid samples (refused on purpose; see
// TestSamples) and config/samples/flux* (Flux objects, whose CRDs this API
// server does not have; another engineer's, tested with hack/flux).
func manifestFiles(t *testing.T) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir(filepath.Join(root, "config"), func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, path)
		if err != nil {
			return err
		}
		if d.IsDir() {
			if rel == filepath.Join("config", "samples", "invalid") || strings.HasPrefix(rel, filepath.Join("config", "samples", "flux")) {
				return filepath.SkipDir
			}
			return nil
		}
		if strings.HasPrefix(rel, filepath.Join("config", "samples", "flux")) || d.Name() == "kustomization.yaml" {
			return nil
		}
		if ext := filepath.Ext(path); ext == ".yaml" || ext == ".yml" {
			files = append(files, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// dryRunApply server-side applies u without persisting it: the API server
// decodes it strictly (unknown fields are errors), defaults it, validates it
// against the built-in or CRD schema including CEL rules, and runs admission.
func dryRunApply(ctx context.Context, c client.Client, u *unstructured.Unstructured) error {
	return c.Apply(ctx, client.ApplyConfigurationFromUnstructured(u.DeepCopy()),
		client.FieldOwner("routemode-config-test"), client.ForceOwnership, client.DryRunAll)
}

// ensureNamespace creates routemode-system for real on the dry-run server:
// a dry run does not create the Namespace, and the API server's
// NamespaceLifecycle admission refuses objects in a namespace that does not
// exist, dry run or not. (A real `kubectl apply -k` creates it first; see
// TestKubectlApplyInstallsEverything.)
func ensureNamespace(t *testing.T) {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}
	if err := dryRunEnv.client.Create(context.Background(), ns); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
}

// TestEveryManifestDryRun applies, with server-side dry run, every object of
// every kustomization under config/ and of every manifest file on its own.
func TestEveryManifestDryRun(t *testing.T) {
	ensureNamespace(t)
	ctx := context.Background()
	c := dryRunEnv.client

	for _, dir := range kustomizations(t) {
		t.Run("kustomize "+dir, func(t *testing.T) {
			objs := kustomize(t, dir)
			if len(objs) == 0 {
				t.Fatal("builds to nothing")
			}
			for _, u := range objs {
				if err := dryRunApply(ctx, c, u); err != nil {
					t.Errorf("%s: %v", id(u), err)
				}
			}
		})
	}
	for _, f := range manifestFiles(t) {
		t.Run("file "+f, func(t *testing.T) {
			objs := decodeFile(t, filepath.Join(root, f))
			if len(objs) == 0 {
				t.Fatal("holds no object")
			}
			for _, u := range objs {
				if err := dryRunApply(ctx, c, u); err != nil {
					t.Errorf("%s: %v", id(u), err)
				}
			}
		})
	}

	// Nothing was persisted: the operator Deployment exists on no server
	// that only saw dry runs.
	u := &unstructured.Unstructured{}
	u.SetAPIVersion("apps/v1")
	u.SetKind("Deployment")
	if err := c.Get(ctx, client.ObjectKey{Namespace: namespace, Name: "routemode-operator"}, u); !apierrors.IsNotFound(err) {
		t.Errorf("after dry runs, get Deployment routemode-operator: %v, want NotFound", err)
	}
}

// TestDryRunRefusesBrokenObjects shows that the dry run above checks what
// matters: the API server refuses typos and invalid security settings.
func TestDryRunRefusesBrokenObjects(t *testing.T) {
	ensureNamespace(t)
	ctx := context.Background()
	ds := find(t, kustomize(t, "config/default"), "DaemonSet", "routemode-agent")

	typo := ds.DeepCopy()
	containers, _, _ := unstructured.NestedSlice(typo.Object, "spec", "template", "spec", "containers")
	containers[0].(map[string]any)["volumeMounts"].([]any)[0].(map[string]any)["mountPropogation"] = "HostToContainer"
	_ = unstructured.SetNestedSlice(typo.Object, containers, "spec", "template", "spec", "containers")
	if err := dryRunApply(ctx, dryRunEnv.client, typo); err == nil || !strings.Contains(err.Error(), "mountPropogation") {
		t.Errorf("dry run of a DaemonSet with a misspelt field: %v, want an unknown-field error", err)
	}

	// Bidirectional propagation, which would let the agent's own bpffs or
	// netns mounts reach the host, is for privileged containers only: the
	// reason the agent mounts /sys/fs/bpf and /var/run/netns HostToContainer.
	bidi := ds.DeepCopy()
	containers, _, _ = unstructured.NestedSlice(bidi.Object, "spec", "template", "spec", "containers")
	containers[0].(map[string]any)["volumeMounts"].([]any)[0].(map[string]any)["mountPropagation"] = "Bidirectional"
	_ = unstructured.SetNestedSlice(bidi.Object, containers, "spec", "template", "spec", "containers")
	err := dryRunApply(ctx, dryRunEnv.client, bidi)
	if !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), "Bidirectional mount propagation is available only to privileged containers") {
		t.Errorf("dry run of the agent with a Bidirectional mount: %v, want Invalid", err)
	}
}

func find(t *testing.T, objs []*unstructured.Unstructured, kind, name string) *unstructured.Unstructured {
	t.Helper()
	for _, u := range objs {
		if u.GetKind() == kind && u.GetName() == name {
			return u
		}
	}
	t.Fatalf("no %s %s", kind, name)
	return nil
}

// TestDefaultHasEveryManifest checks that config/default installs every
// object defined under config/ (samples aside), so that no manifest is
// written and then forgotten in a kustomization.
func TestDefaultHasEveryManifest(t *testing.T) {
	var built []string
	for _, u := range kustomize(t, "config/default") {
		built = append(built, id(u))
	}
	for _, f := range manifestFiles(t) {
		if strings.HasPrefix(f, filepath.Join("config", "samples")+string(os.PathSeparator)) {
			continue
		}
		for _, u := range decodeFile(t, filepath.Join(root, f)) {
			if !slices.Contains(built, id(u)) {
				t.Errorf("%s from %s is not in `kubectl kustomize config/default`", id(u), f)
			}
		}
	}
	t.Logf("config/default builds %d objects:\n  %s", len(built), strings.Join(built, "\n  "))
}

// TestKubectlServerSideDryRun runs what an administrator would run to check
// the installation first.
func TestKubectlServerSideDryRun(t *testing.T) {
	ensureNamespace(t)
	out, stderr, err := dryRunEnv.kubectl("apply", "-k", "config/default", "--server-side", "--dry-run=server")
	if err != nil {
		t.Fatalf("kubectl apply -k config/default --server-side --dry-run=server: %v\nstdout:\n%s\nstderr:\n%s", err, out, stderr)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if want := len(kustomize(t, "config/default")); len(lines) != want {
		t.Errorf("kubectl printed %d lines, want one per object (%d):\n%s", len(lines), want, out)
	}
	for _, l := range lines {
		if !strings.HasSuffix(l, "(server dry run)") {
			t.Errorf("unexpected line %q", l)
		}
	}
	t.Logf("kubectl apply -k config/default --server-side --dry-run=server:\n%s%s", out, stderr)
}
