// Package config_test checks routemode's deployable manifests against a real
// kube-apiserver (envtest, built from source into bin/k8s): every manifest is
// server-side dry-run applied, `kubectl apply -k config/default` installs
// everything on a pristine API server, the agent's RBAC and admission policy
// are exercised with impersonated service-account identities, and the
// samples are applied (the invalid ones refused) with kubectl.
package config_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	rmscheme "github.com/routemode/routemode/internal/scheme"

	"github.com/go-logr/logr"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/routemode/routemode/internal/testenv"
)

const namespace = "routemode-system"

// dryRunEnv is an API server with the CRDs installed by envtest and nothing
// else; only server-side dry runs go to it (plus the namespace they need).
var dryRunEnv *cluster

// cluster is a running API server with a client and a kubeconfig for kubectl.
type cluster struct {
	env        *envtest.Environment
	cfg        *rest.Config
	client     client.Client
	kubeconfig string
}

var root string

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	ctrllog.SetLogger(logr.Discard())
	te, err := testenv.Start()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	root = te.Root
	dir, err := os.MkdirTemp("", "routemode-config-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		_ = te.Stop()
		return 1
	}
	defer os.RemoveAll(dir)
	tmpDir = dir
	dryRunEnv = &cluster{env: te.Environment, cfg: te.Config, client: te.Client}
	if dryRunEnv.kubeconfig, err = writeKubeconfig(te.Config, filepath.Join(dir, "dry-run.kubeconfig")); err != nil {
		fmt.Fprintln(os.Stderr, err)
		_ = te.Stop()
		return 1
	}
	code := m.Run()
	if err := te.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, "stopping the dry-run API server:", err)
	}
	for name, c := range pristine {
		if err := c.env.Stop(); err != nil {
			fmt.Fprintf(os.Stderr, "stopping the %s API server: %v\n", name, err)
		}
	}
	return code
}

var tmpDir string

// writeKubeconfig writes a kubeconfig for cfg, which envtest authenticates
// with a client certificate of its admin user (group system:masters).
func writeKubeconfig(cfg *rest.Config, path string) (string, error) {
	kc := clientcmdapi.NewConfig()
	kc.Clusters["envtest"] = &clientcmdapi.Cluster{
		Server:                   cfg.Host,
		CertificateAuthorityData: cfg.CAData,
	}
	kc.AuthInfos["admin"] = &clientcmdapi.AuthInfo{
		ClientCertificateData: cfg.CertData,
		ClientKeyData:         cfg.KeyData,
		Token:                 cfg.BearerToken,
	}
	kc.Contexts["envtest"] = &clientcmdapi.Context{Cluster: "envtest", AuthInfo: "admin"}
	kc.CurrentContext = "envtest"
	return path, clientcmd.WriteToFile(*kc, path)
}

// kubectl runs bin/k8s/kubectl against c and returns its stdout and stderr.
func (c *cluster) kubectl(args ...string) (stdout, stderr string, err error) {
	return kubectl(append([]string{"--kubeconfig", c.kubeconfig}, args...)...)
}

func kubectl(args ...string) (stdout, stderr string, err error) {
	bin := filepath.Join(assetsDir(), "kubectl")
	cmd := exec.Command(bin, args...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "KUBECACHEDIR="+filepath.Join(tmpDir, "kube-cache"), "KUBECONFIG=/dev/null")
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return o.String(), e.String(), err
}

// assetsDir is where kube-apiserver, etcd and kubectl are, as testenv finds them.
func assetsDir() string {
	if d := os.Getenv("KUBEBUILDER_ASSETS"); d != "" {
		return d
	}
	return filepath.Join(root, "bin", "k8s")
}

var (
	installOnce sync.Once
	installOut  string
	installErr  error
)

// installed returns a second, pristine API server (no namespace, no CRDs,
// nothing) on which `kubectl apply -k config/default` ran for real, as it
// would on a new cluster. The first caller starts it and applies; later
// callers share it.
func installed(t *testing.T) *cluster {
	t.Helper()
	installOnce.Do(func() {
		var c *cluster
		c, installErr = startPristine("installed")
		if installErr != nil {
			return
		}
		var stderr string
		var err error
		installOut, stderr, err = c.kubectl("apply", "-k", "config/default")
		if err != nil {
			installErr = fmt.Errorf("kubectl apply -k config/default: %w\nstdout:\n%s\nstderr:\n%s", err, installOut, stderr)
		}
	})
	if installErr != nil {
		t.Fatal(installErr)
	}
	return pristine["installed"]
}

// pristine are the API servers startPristine started, by name, stopped
// after the tests.
var pristine = map[string]*cluster{}

// startPristine starts an API server with nothing installed (no namespace,
// no CRDs), as a new cluster is, with a client and a kubeconfig.
func startPristine(name string) (*cluster, error) {
	env := &envtest.Environment{BinaryAssetsDirectory: assetsDir(), Scheme: scheme()}
	cfg, err := testenv.StartEnvironment(env)
	if err != nil {
		return nil, fmt.Errorf("starting a pristine API server: %w", err)
	}
	c := &cluster{env: env, cfg: cfg}
	pristine[name] = c
	if c.client, err = client.New(cfg, client.Options{Scheme: scheme()}); err != nil {
		return nil, err
	}
	if c.kubeconfig, err = writeKubeconfig(cfg, filepath.Join(tmpDir, name+".kubeconfig")); err != nil {
		return nil, err
	}
	return c, nil
}

// scheme is the shared one (core and routemode types) plus CRDs.
func scheme() *runtime.Scheme {
	s, err := rmscheme.New()
	if err != nil {
		panic(err)
	}
	if err := apiextensionsv1.AddToScheme(s); err != nil {
		panic(err)
	}
	return s
}

// decodeYAML splits a multi-document YAML stream into objects, skipping
// empty documents.
func decodeYAML(r io.Reader) ([]*unstructured.Unstructured, error) {
	dec := utilyaml.NewYAMLOrJSONDecoder(r, 4096)
	var objs []*unstructured.Unstructured
	for {
		u := &unstructured.Unstructured{}
		err := dec.Decode(&u.Object)
		if errors.Is(err, io.EOF) {
			return objs, nil
		}
		if err != nil {
			return nil, err
		}
		if len(u.Object) == 0 {
			continue
		}
		if u.GetAPIVersion() == "" || u.GetKind() == "" {
			return nil, fmt.Errorf("a document without apiVersion or kind: %v", u.Object)
		}
		objs = append(objs, u)
	}
}

func decodeFile(t *testing.T, path string) []*unstructured.Unstructured {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	objs, err := decodeYAML(f)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return objs
}

// kustomize builds dir (relative to the repository root) with kubectl's
// built-in kustomize, the one `kubectl apply -k` uses.
func kustomize(t *testing.T, dir string) []*unstructured.Unstructured {
	t.Helper()
	out, stderr, err := kubectl("kustomize", dir)
	if err != nil {
		t.Fatalf("kubectl kustomize %s: %v\n%s", dir, err, stderr)
	}
	objs, err := decodeYAML(strings.NewReader(out))
	if err != nil {
		t.Fatalf("kubectl kustomize %s: %v", dir, err)
	}
	return objs
}

func id(u *unstructured.Unstructured) string {
	s := u.GroupVersionKind().GroupKind().String() + " " + u.GetName()
	if u.GetNamespace() != "" {
		s += " in " + u.GetNamespace()
	}
	return s
}

// eventually retries f every 100 ms until it returns nil or timeout passes,
// for what the API server applies asynchronously (RBAC and admission policy
// changes reach the authorizer and the admission plugin through informers).
func eventually(t *testing.T, timeout time.Duration, what string, f func(context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var err error
	for {
		if err = f(ctx); err == nil {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s: still failing after %s: %v", what, timeout, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}
