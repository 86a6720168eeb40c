// Package testenv starts the real kube-apiserver and etcd that the tests run
// against, built from source by `make envtest-bin`, with routemode's CRDs
// installed.
package testenv

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	rmscheme "github.com/routemode/routemode/internal/scheme"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

// Env is a running API server.
type Env struct {
	*envtest.Environment
	Config *rest.Config
	Client client.Client
	Scheme *runtime.Scheme
	// Root is the repository's root directory.
	Root string
}

// RepoRoot finds the directory holding the project's go.mod.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && bytes.HasPrefix(b, []byte("module github.com/routemode/routemode\n")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no routemode go.mod above %s", dir)
		}
		dir = parent
	}
}

// Start starts etcd and kube-apiserver with the CRDs installed. It fails,
// rather than skipping, when the binaries are missing: a skipped API test
// must not pass for a passed one.
func Start() (*Env, error) {
	root, err := RepoRoot()
	if err != nil {
		return nil, err
	}
	assets := os.Getenv("KUBEBUILDER_ASSETS")
	if assets == "" {
		assets = filepath.Join(root, "bin", "k8s")
	}
	for _, b := range []string{"kube-apiserver", "etcd"} {
		if _, err := os.Stat(filepath.Join(assets, b)); err != nil {
			return nil, fmt.Errorf("%s not found in %s: run `make envtest-bin` (builds the API server from source) or set KUBEBUILDER_ASSETS", b, assets)
		}
	}
	scheme, err := rmscheme.New()
	if err != nil {
		return nil, err
	}
	env := &envtest.Environment{
		BinaryAssetsDirectory: assets,
		CRDDirectoryPaths:     []string{filepath.Join(root, "config", "crd", "bases")},
		ErrorIfCRDPathMissing: true,
		Scheme:                scheme,
	}
	cfg, err := StartEnvironment(env)
	if err != nil {
		return nil, err
	}
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		_ = env.Stop()
		return nil, err
	}
	return &Env{Environment: env, Config: cfg, Client: c, Scheme: scheme, Root: root}, nil
}

// StartEnvironment starts env's kube-apiserver and etcd with a start
// timeout a loaded machine meets, and says why a start failed.
func StartEnvironment(env *envtest.Environment) (*rest.Config, error) {
	// envtest's 20 s is an idle machine's figure: under a load average of
	// 40 on 2 cores kube-apiserver took longer, and every test of the
	// package failed without having run.
	env.ControlPlaneStartTimeout = 2 * time.Minute
	// Their output, otherwise discarded, says why a start failed (envtest
	// only says the process exited); only its end is kept.
	apiOut, etcdOut := &tail{max: 4096}, &tail{max: 2048}
	api := env.ControlPlane.GetAPIServer()
	api.Out, api.Err = apiOut, apiOut
	env.ControlPlane.Etcd = &envtest.Etcd{Out: etcdOut, Err: etcdOut}
	cfg, err := env.Start()
	if err != nil {
		return nil, fmt.Errorf("starting kube-apiserver and etcd from %s: %w\nkube-apiserver's last output:\n%s\netcd's last output:\n%s", env.BinaryAssetsDirectory, err, apiOut, etcdOut)
	}
	return cfg, nil
}

// tail keeps the last max bytes written to it.
type tail struct {
	mu  sync.Mutex
	max int
	buf []byte
}

func (t *tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if over := len(t.buf) - t.max; over > 0 {
		t.buf = append(t.buf[:0], t.buf[over:]...)
	}
	return len(p), nil
}

func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.buf)
}

// Main runs a package's tests against one API server, started before them
// and stopped after, and exits with the tests' code.
func Main(m *testing.M, env **Env) {
	e, err := Start()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	*env = e
	code := m.Run()
	if err := e.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, "stopping the API server:", err)
	}
	os.Exit(code)
}

// Lazy starts the API server the first time a test asks for it, for
// packages whose other tests need none.
type Lazy struct {
	once sync.Once
	env  *Env
	err  error
}

// Get returns the running API server, starting it if needed.
func (l *Lazy) Get(t testing.TB) *Env {
	t.Helper()
	l.once.Do(func() { l.env, l.err = Start() })
	if l.err != nil {
		t.Fatalf("starting the API server: %v", l.err)
	}
	return l.env
}

// Main runs a package's tests and stops the API server if one of them
// started it, then exits with the tests' code.
func (l *Lazy) Main(m *testing.M) {
	code := m.Run()
	l.Stop()
	os.Exit(code)
}

// Stop stops the API server if it was started.
func (l *Lazy) Stop() {
	if l.env != nil {
		if err := l.env.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "stopping the API server:", err)
		}
	}
}
