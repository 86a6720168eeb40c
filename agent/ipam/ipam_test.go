package ipam

import (
	"fmt"
	"net/netip"
	"sync"
	"testing"
)

func TestReservedAddresses(t *testing.T) {
	p := netip.MustParsePrefix("10.0.3.0/24")
	if RouterIP(p) != netip.MustParseAddr("10.0.3.1") || HealthIP(p) != netip.MustParseAddr("10.0.3.2") || Broadcast(p) != netip.MustParseAddr("10.0.3.255") {
		t.Errorf("router %s health %s broadcast %s", RouterIP(p), HealthIP(p), Broadcast(p))
	}
}

func TestAllocateReleaseExhaust(t *testing.T) {
	a, err := New(t.TempDir(), netip.MustParsePrefix("10.0.0.0/29")) // .3 to .6
	if err != nil {
		t.Fatal(err)
	}
	var got []netip.Addr
	for i := range 4 {
		ip, err := a.Allocate(fmt.Sprintf("c%d", i), "eth0")
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, ip)
	}
	want := []string{"10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"}
	for i, ip := range got {
		if ip.String() != want[i] {
			t.Errorf("allocation %d = %s, want %s", i, ip, want[i])
		}
	}
	if ip, err := a.Allocate("c0", "eth0"); err != nil || ip != got[0] {
		t.Errorf("repeated ADD got %s %v, want the same %s", ip, err, got[0])
	}
	if _, err := a.Allocate("c9", "eth0"); err == nil {
		t.Error("allocated from an exhausted range")
	}
	if all, err := a.Allocations(); err != nil || len(all) != a.Capacity() || a.Capacity() != 4 ||
		all[2] != (Allocation{IP: got[2], ContainerID: "c2", IfName: "eth0"}) {
		t.Errorf("allocations of a full /29: %+v %v, capacity %d", all, err, a.Capacity())
	}
	if err := a.Release("c1", "eth0"); err != nil {
		t.Fatal(err)
	}
	if err := a.Release("c1", "eth0"); err != nil {
		t.Errorf("second release: %v", err)
	}
	if ip, err := a.Allocate("c9", "eth0"); err != nil || ip != got[1] {
		t.Errorf("after release got %s %v, want %s", ip, err, got[1])
	}
}

func TestConcurrentAllocations(t *testing.T) {
	dir := t.TempDir()
	p := netip.MustParsePrefix("10.0.0.0/24")
	const n = 64
	ips := make([]netip.Addr, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a, err := New(dir, p) // separate allocators, as separate plugin processes
			if err != nil {
				t.Error(err)
				return
			}
			ips[i], err = a.Allocate(fmt.Sprintf("c%d", i), "eth0")
			if err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	seen := map[netip.Addr]bool{}
	for _, ip := range ips {
		if seen[ip] || !p.Contains(ip) {
			t.Errorf("duplicate or foreign address %s", ip)
		}
		seen[ip] = true
	}
}
