package testenv

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A kube-apiserver that exits at once: Start fails, and its error carries
// what the process said, which envtest alone drops.
func TestStartFailureCarriesTheOutput(t *testing.T) {
	root, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	etcd := filepath.Join(root, "bin", "k8s", "etcd")
	if assets := os.Getenv("KUBEBUILDER_ASSETS"); assets != "" {
		etcd = filepath.Join(assets, "etcd")
	}
	if _, err := os.Stat(etcd); err != nil {
		t.Fatalf("%v: run `make envtest-bin`", err)
	}
	dir := t.TempDir()
	if err := os.Symlink(etcd, filepath.Join(dir, "etcd")); err != nil {
		t.Fatal(err)
	}
	// envtest first asks for --help to learn the flags; that succeeds.
	script := "#!/bin/sh\n[ \"$1\" = --help ] && exit 0\necho 'unable to listen: the reason a start failed' >&2\nexit 1\n"
	if err := os.WriteFile(filepath.Join(dir, "kube-apiserver"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("KUBEBUILDER_ASSETS", dir)
	env, err := Start()
	if err == nil {
		_ = env.Stop()
		t.Fatal("Start succeeded with a kube-apiserver that exits at once")
	}
	if !strings.Contains(err.Error(), "the reason a start failed") {
		t.Errorf("Start's error does not carry kube-apiserver's output: %v", err)
	}
}
