package endpoint

import (
	"net/netip"
	"os"
	"path/filepath"
	"testing"
)

func TestStore(t *testing.T) {
	s := Store{Dir: filepath.Join(t.TempDir(), "eps")}
	if eps, err := s.List(); err != nil || len(eps) != 0 {
		t.Fatalf("empty store: %v %v", eps, err)
	}
	b := Endpoint{ContainerID: "b/../x", IfName: "eth0", IP: netip.MustParseAddr("10.0.0.9"), LXCName: LXCName("b", "eth0")}
	a := Endpoint{ContainerID: "a", IfName: "eth0", IP: netip.MustParseAddr("10.0.0.3"), ID: IDFor(netip.MustParseAddr("10.0.0.3"))}
	for _, e := range []Endpoint{b, a} {
		if err := s.Put(e); err != nil {
			t.Fatal(err)
		}
	}
	// A partial temporary file and garbage are not records.
	_ = os.WriteFile(filepath.Join(s.Dir, ".tmp-123"), []byte("{"), 0o644)
	eps, err := s.List()
	if err != nil || len(eps) != 2 || eps[0].ContainerID != "a" || eps[1].ContainerID != "b/../x" {
		t.Fatalf("list %+v %v", eps, err)
	}
	if got, ok, err := s.Get("a", "eth0"); err != nil || !ok || got != a {
		t.Errorf("get %+v %v %v", got, ok, err)
	}
	if err := s.Delete("a", "eth0"); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete("a", "eth0"); err != nil {
		t.Errorf("second delete: %v", err)
	}
	if _, ok, _ := s.Get("a", "eth0"); ok {
		t.Error("record survived delete")
	}
}

func TestLXCName(t *testing.T) {
	n := LXCName("0123456789abcdef", "eth0")
	if len(n) != 15 || n[:3] != "lxc" || n != LXCName("0123456789abcdef", "eth0") || n == LXCName("0123456789abcdef", "net1") {
		t.Errorf("LXCName = %q: want 15 characters, lxc prefix, deterministic, distinct per interface", n)
	}
	if IDFor(netip.MustParseAddr("10.0.1.124")) != 1<<8|124 {
		t.Errorf("IDFor = %d", IDFor(netip.MustParseAddr("10.0.1.124")))
	}
}
