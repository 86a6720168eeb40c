package nsutil

import (
	"crypto/rand"
	"encoding/hex"
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
	here, err := ReadSysctl(nil, "net/ipv4/conf/lo/rp_filter")
	if err != nil {
		t.Fatal(err)
	}
	want := "2"
	if here == "2" {
		want = "1"
	}
	if err := WriteSysctl(n, "net.ipv4.conf.lo.rp_filter", want); err != nil {
		t.Fatal(err)
	}
	if got, _ := ReadSysctl(n, "net/ipv4/conf/lo/rp_filter"); got != want {
		t.Errorf("inside: %q, want %q", got, want)
	}
	if got, _ := ReadSysctl(nil, "net/ipv4/conf/lo/rp_filter"); got != here {
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
