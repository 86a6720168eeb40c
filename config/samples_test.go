package config_test

import (
	"bufio"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/routemode/routemode/api/v1alpha1"
)

// expectedError is the `# expected-error: ...` comment of an invalid sample.
func expectedError(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if msg, ok := strings.CutPrefix(s.Text(), "# expected-error: "); ok {
			return msg
		}
	}
	t.Fatalf("%s has no `# expected-error: <message>` comment", path)
	return ""
}

// TestSamples applies config/samples/ with kubectl on the installed server,
// after checking that each sample in config/samples/invalid/ is refused with
// the message its comment expects.
func TestSamples(t *testing.T) {
	cl := installed(t)
	ctx := context.Background()
	rm := &v1alpha1.RoutingMode{}
	rm.Name = v1alpha1.RoutingModeName
	if err := cl.client.Delete(ctx, rm); err != nil && !apierrors.IsNotFound(err) {
		t.Fatal(err)
	}

	invalid, err := filepath.Glob(filepath.Join(root, "config", "samples", "invalid", "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(invalid) == 0 {
		t.Fatal("no invalid samples")
	}
	for _, path := range invalid {
		rel, _ := filepath.Rel(root, path)
		t.Run(rel, func(t *testing.T) {
			want := expectedError(t, path)
			out, stderr, err := cl.kubectl("apply", "-f", rel)
			if err == nil {
				t.Fatalf("kubectl apply -f %s succeeded:\n%s", rel, out)
			}
			if !strings.Contains(stderr, want) {
				t.Errorf("kubectl apply -f %s refused with\n%s\nwant the message %q", rel, stderr, want)
			}
			t.Logf("refused: %s", strings.TrimSpace(stderr))
			for _, u := range decodeFile(t, path) {
				if err := cl.client.Get(ctx, client.ObjectKeyFromObject(u), u.DeepCopy()); !apierrors.IsNotFound(err) {
					t.Errorf("%s exists after the refused apply (%v)", id(u), err)
				}
			}
		})
	}

	// config/samples/ itself, as a user would apply it; Flux's samples aside
	// when they sit there (their CRDs are not installed here).
	args := []string{"apply", "-f", "config/samples/"}
	if flux, _ := filepath.Glob(filepath.Join(root, "config", "samples", "flux*")); len(flux) > 0 {
		args = []string{"apply"}
		files, _ := filepath.Glob(filepath.Join(root, "config", "samples", "*.yaml"))
		for _, f := range files {
			if !strings.HasPrefix(filepath.Base(f), "flux") {
				args = append(args, "-f", f)
			}
		}
	}
	out, stderr, err := cl.kubectl(args...)
	if err != nil {
		t.Fatalf("kubectl %s: %v\n%s%s", strings.Join(args, " "), err, out, stderr)
	}
	t.Logf("kubectl %s:\n%s", strings.Join(args, " "), out)

	// Both samples are RoutingMode default: switching between them is
	// applying the other file.
	for _, s := range []struct {
		file   string
		tunnel v1alpha1.Tunnel
		cidr   string
		direct bool
		host   v1alpha1.HostRouting
	}{
		{"config/samples/native-routing.yaml", v1alpha1.TunnelDisabled, "10.0.0.0/16", true, v1alpha1.HostRoutingBPF},
		{"config/samples/tunnel.yaml", v1alpha1.TunnelVXLAN, "", false, v1alpha1.HostRoutingLegacy},
	} {
		if out, stderr, err := cl.kubectl("apply", "-f", s.file); err != nil {
			t.Fatalf("kubectl apply -f %s: %v\n%s%s", s.file, err, out, stderr)
		}
		got := &v1alpha1.RoutingMode{}
		if err := cl.client.Get(ctx, client.ObjectKey{Name: v1alpha1.RoutingModeName}, got); err != nil {
			t.Fatal(err)
		}
		if got.Spec.Tunnel != s.tunnel || got.Spec.NativeRoutingCIDR != s.cidr || got.Spec.AutoDirectNodeRoutes != s.direct || got.Spec.HostRouting != s.host || got.Spec.TunnelPort != v1alpha1.DefaultTunnelPort {
			t.Errorf("after kubectl apply -f %s: spec %+v", s.file, got.Spec)
		}
	}
}
