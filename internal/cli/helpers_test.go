package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/routemode/routemode/internal/testenv"
)

// result is one run of routemodectl.
type result struct {
	out, err string
	code     int
}

// run executes routemodectl in-process with fake dependencies.
func run(t *testing.T, d deps, stdin string, args ...string) result {
	t.Helper()
	return runCtx(t, context.Background(), d, stdin, args...)
}

// runCtx is run until ctx ends, for commands that run until interrupted.
func runCtx(t *testing.T, ctx context.Context, d deps, stdin string, args ...string) result {
	t.Helper()
	var out, errOut bytes.Buffer
	s := Streams{In: strings.NewReader(stdin), Out: &out, ErrOut: &errOut}
	cmd := NewRootCommand(s, d)
	cmd.SetArgs(args)
	code := 0
	if err := cmd.ExecuteContext(ctx); err != nil {
		errOut.WriteString("Error: " + err.Error() + "\n")
		code = 1
	}
	return result{out.String(), errOut.String(), code}
}

func noDeps() deps {
	return deps{
		listEndpoints:    func(string) ([]endpoint, error) { panic("unexpected bpf access") },
		listDirectRoutes: func(string) ([]directRoute, error) { panic("unexpected bpf access") },
		listMetrics:      func(string) ([]metric, error) { panic("unexpected bpf access") },
		openMonitor:      func(context.Context, string, func()) (eventSource, error) { panic("unexpected bpf access") },
		ifName:           func(int) (string, error) { panic("unexpected interface lookup") },
		hostname:         func() (string, error) { return "test-node", nil },
	}
}

var (
	envOnce    sync.Once
	env        *testenv.Env
	kubeconfig string
	envErr     error
)

// startEnv starts a real API server on first use and writes a kubeconfig
// for it. Missing binaries fail the test: a skip would count as a pass.
func startEnv(t *testing.T) (*testenv.Env, string) {
	t.Helper()
	envOnce.Do(func() {
		env, envErr = testenv.Start()
		if envErr != nil {
			return
		}
		var user *envtest.AuthenticatedUser
		user, envErr = env.AddUser(envtest.User{Name: "routemodectl-test", Groups: []string{"system:masters"}}, nil)
		if envErr != nil {
			return
		}
		var kc []byte
		kc, envErr = user.KubeConfig()
		if envErr != nil {
			return
		}
		var dir string
		dir, envErr = os.MkdirTemp("", "routemodectl-test-")
		if envErr != nil {
			return
		}
		kubeconfig = filepath.Join(dir, "kubeconfig")
		envErr = os.WriteFile(kubeconfig, kc, 0o600)
	})
	if envErr != nil {
		t.Fatalf("envtest: %v", envErr)
	}
	return env, kubeconfig
}

func TestMain(m *testing.M) {
	code := m.Run()
	if env != nil {
		_ = env.Stop()
	}
	if kubeconfig != "" {
		_ = os.RemoveAll(filepath.Dir(kubeconfig))
	}
	os.Exit(code)
}

func mustContain(t *testing.T, what, got string, wants ...string) {
	t.Helper()
	for _, w := range wants {
		if !strings.Contains(got, w) {
			t.Errorf("%s lacks %q:\n%s", what, w, got)
		}
	}
}
