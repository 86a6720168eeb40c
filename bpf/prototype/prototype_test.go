//go:build linux

package prototype

import (
	"encoding/binary"
	"net"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/routemode/routemode/internal/privileged"
)

const tcActRedirect = 7

// frame is an Ethernet + IPv4 + UDP frame to dst with a valid header
// checksum and TTL 64.
func frame(dst netip.Addr) []byte {
	b := make([]byte, 14+20+8+18)
	binary.BigEndian.PutUint16(b[12:], 0x0800)
	ip := b[14:34]
	ip[0], ip[8], ip[9] = 0x45, 64, 17
	binary.BigEndian.PutUint16(ip[2:], uint16(len(b)-14))
	src := netip.MustParseAddr("10.0.1.5").As4()
	d := dst.As4()
	copy(ip[12:], src[:])
	copy(ip[16:], d[:])
	var sum uint32
	for i := 0; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(ip[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(ip[10:], ^uint16(sum))
	return b
}

// The rebuilt prototype does what docs/host-routing.md says it did: a local pod's
// packet from the underlay gets its MACs and TTL rewritten and is
// redirected; anything else passes. Its verifier work is reported beside
// the original's (about 220 and 120 instructions).
func TestPrototypeDeliversToLocalPod(t *testing.T) {
	privileged.Require(t, "loads BPF programs")
	o, err := Load()
	if err != nil {
		privileged.Unavailable(t, err.Error())
	}
	defer o.Close()
	pod := netip.MustParseAddr("10.0.0.85")
	podMAC := net.HardwareAddr{2, 0, 0, 0, 0, 0x85}
	lxcMAC := net.HardwareAddr{2, 0, 0, 0, 0, 0x01}
	if err := o.AddPod(pod, 34, podMAC, lxcMAC); err != nil {
		t.Fatal(err)
	}

	out := make([]byte, len(frame(pod)))
	ret, err := o.ProtoFromNetdev.Run(&ebpf.RunOptions{Data: frame(pod), DataOut: out})
	if err != nil {
		t.Fatal(err)
	}
	if ret != tcActRedirect || net.HardwareAddr(out[0:6]).String() != podMAC.String() ||
		net.HardwareAddr(out[6:12]).String() != lxcMAC.String() || out[14+8] != 63 {
		t.Errorf("to the local pod: verdict %d, dst %x src %x ttl %d; want redirect with the pod's MACs and TTL 63",
			ret, out[0:6], out[6:12], out[14+8])
	}
	if ret, err := o.ProtoFromNetdev.Run(&ebpf.RunOptions{Data: frame(netip.MustParseAddr("10.0.0.86"))}); err != nil || ret != 0 {
		t.Errorf("to an unknown address: verdict %d, %v; want TC_ACT_OK", ret, err)
	}
	if netdev, _, err := o.Redirects(); err != nil || netdev != 1 {
		t.Errorf("redirect count %d, %v; want 1", netdev, err)
	}
	for name, p := range map[string]*ebpf.Program{"proto_from_netdev": o.ProtoFromNetdev, "proto_from_lxc": o.ProtoFromLxc} {
		if info, err := p.Info(); err == nil {
			if n, ok := info.VerifiedInstructions(); ok {
				t.Logf("%s: %d instructions verified", name, n)
			}
		}
	}
}
