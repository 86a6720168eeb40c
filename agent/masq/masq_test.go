package masq

import (
	"net/netip"
	"testing"

	"github.com/routemode/routemode/internal/privileged"

	"github.com/routemode/routemode/agent/nsutil"
)

func TestEnsureIsIdempotent(t *testing.T) {
	privileged.Require(t, "creates a network namespace")
	name, n, err := nsutil.CreateTemp("rmmasq")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close(); _ = nsutil.Delete(name) })
	m := Masq{NetNSFd: int(n.Fd())}
	cfg := Config{PodCIDR: netip.MustParsePrefix("10.0.0.0/24"), Exempt: netip.MustParsePrefix("10.0.0.0/16"),
		Underlay: "eth0", NodeIP: netip.MustParseAddr("192.168.0.120")}
	if cur, err := m.Current(); err != nil || cur != "" {
		t.Fatalf("fresh namespace: %q %v", cur, err)
	}
	if changed, err := m.Ensure(cfg); err != nil || !changed {
		t.Fatalf("first Ensure: %v %v", changed, err)
	}
	if changed, err := m.Ensure(cfg); err != nil || changed {
		t.Fatalf("second Ensure changed=%v err=%v, want no change", changed, err)
	}
	cfg.NodeIP = netip.MustParseAddr("192.168.0.121")
	if changed, err := m.Ensure(cfg); err != nil || !changed {
		t.Fatalf("new node IP: %v %v", changed, err)
	}
	if cur, _ := m.Current(); cur != cfg.fingerprint() {
		t.Errorf("installed %q, want %q", cur, cfg.fingerprint())
	}
	if err := m.Delete(); err != nil {
		t.Fatal(err)
	}
	if cur, _ := m.Current(); cur != "" {
		t.Errorf("after Delete: %q", cur)
	}
	if err := m.Delete(); err != nil {
		t.Errorf("second Delete: %v", err)
	}
}
