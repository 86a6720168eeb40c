package nsutil

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"

	"github.com/routemode/routemode/internal/privileged"
)

func TestNamedNamespaceAndSysctls(t *testing.T) {
	privileged.Require(t, "creates a network namespace")
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	name := "rmnsutil" + hex.EncodeToString(b)
	t.Cleanup(func() { _ = Delete(name) })
	n, created, err := Ensure(name)
	if err != nil || !created {
		t.Fatalf("Ensure: created=%v %v", created, err)
	}
	n.Close()
	n, created, err = Ensure(name)
	if err != nil || created {
		t.Fatalf("second Ensure: created=%v %v", created, err)
	}
	defer n.Close()
	// The namespace's sysctls are its own.
	var sysctls Sysctls
	here, err := sysctls.Read(nil, "net/ipv4/conf/lo/rp_filter")
	if err != nil {
		t.Fatal(err)
	}
	want := "2"
	if here == "2" {
		want = "1"
	}
	if err := sysctls.Write(n, "net.ipv4.conf.lo.rp_filter", want); err != nil {
		t.Fatal(err)
	}
	if got, _ := sysctls.Read(n, "net/ipv4/conf/lo/rp_filter"); got != want {
		t.Errorf("inside: %q, want %q", got, want)
	}
	if got, _ := sysctls.Read(nil, "net/ipv4/conf/lo/rp_filter"); got != here {
		t.Errorf("the caller's namespace changed: %q, was %q", got, here)
	}
	if err := Delete(name); err != nil {
		t.Fatal(err)
	}
	if Exists(name) {
		t.Error("namespace still exists after Delete")
	}
	if err := Delete(name); err != nil {
		t.Errorf("second Delete: %v", err)
	}
}

// A Sysctls reads and writes through its own mount, as the agent does
// through the host's /proc/sys in a container.
func TestSysctlsThroughAnotherMount(t *testing.T) {
	root := t.TempDir()
	s := Sysctls{ProcSys: root}
	if got, want := s.Path("net.ipv4.ip_forward"), filepath.Join(root, "net/ipv4/ip_forward"); got != want {
		t.Errorf("Path = %s, want %s", got, want)
	}
	if got := (Sysctls{}).Path("net/ipv4/conf/eth0.100/rp_filter"); got != "/proc/sys/net/ipv4/conf/eth0.100/rp_filter" {
		t.Errorf("default Path = %s", got)
	}
	if err := os.MkdirAll(filepath.Join(root, "net/ipv4"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := s.Write(nil, "net.ipv4.ip_forward", "1"); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Read(nil, "net/ipv4/ip_forward"); err != nil || got != "1" {
		t.Errorf("Read = %q, %v; want what was written", got, err)
	}
}
