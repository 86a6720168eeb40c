//go:build realnodes

package realnodes

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/go-logr/logr"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/routemode/routemode/hack/lab"
	"github.com/routemode/routemode/internal/testenv"
)

// upRealLab builds the binaries and starts a lab of 2 real nodes with
// `make images`' archives loaded, routemode installed from config/default
// unless noInstall; it returns the lab and the repository root. The
// test's cleanup removes the lab and fails if a namespace or cgroup of it
// is left on the host.
func upRealLab(t *testing.T, noInstall bool) (*lab.Lab, string) {
	t.Helper()
	// The lab's clients log nothing worth reading here; without a logger
	// controller-runtime prints a stack trace saying so.
	ctrllog.SetLogger(logr.Discard())
	if os.Geteuid() != 0 {
		t.Fatal("the real nodes need network, mount and UTS namespaces and cgroups: run as root")
	}
	root, err := testenv.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin")
	build := exec.Command("go", "build", "-o", bin+"/", "./cmd/...")
	build.Dir, build.Stdout, build.Stderr = root, os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		t.Fatal("building the binaries:", err)
	}
	id := make([]byte, 2)
	_, _ = rand.Read(id)
	prefix := "rmr" + hex.EncodeToString(id) + "-"
	cfg := lab.Config{Dir: filepath.Join(dir, "lab"), Nodes: 2, Prefix: prefix, Bin: bin, Root: root,
		K8sBin: filepath.Join(root, "bin", "k8s"), NodeBin: filepath.Join(root, "bin", "node"), RealNodes: true,
		Images:    []string{filepath.Join(root, "bin", "images", "routemode-operator.tar"), filepath.Join(root, "bin", "images", "routemode-agent.tar")},
		NoInstall: noInstall}
	l, err := lab.Up(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := lab.Down(cfg.Dir); err != nil {
			t.Error(err)
		}
		for _, n := range l.Nodes {
			if _, err := os.Stat(filepath.Join("/var/run/netns", n.NS)); err == nil {
				t.Errorf("namespace %s left behind", n.NS)
			}
		}
		if out, _ := exec.Command("sh", "-c", "ls -d /sys/fs/cgroup/*/*/*/routemode-lab-"+prefix+"* /sys/fs/cgroup/*/routemode-lab-"+prefix+"* 2>/dev/null").Output(); len(out) > 0 {
			t.Errorf("cgroups left behind: %s", out)
		}
	})
	return l, root
}
