package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/routemode/routemode/bpf"
)

// fakeSource plays events, then ends the monitor the way Ctrl-C does.
type fakeSource struct {
	events []monitorEvent
	lost   []uint64 // Lost's answers in turn; the last one repeats
	stop   context.CancelFunc
	closed bool
}

func (f *fakeSource) Read(time.Time) (monitorEvent, error) {
	if len(f.events) == 0 {
		f.stop()
		return monitorEvent{}, os.ErrDeadlineExceeded
	}
	ev := f.events[0]
	f.events = f.events[1:]
	return ev, nil
}

func (f *fakeSource) Lost() (uint64, error) {
	n := f.lost[0]
	if len(f.lost) > 1 {
		f.lost = f.lost[1:]
	}
	return n, nil
}

func (f *fakeSource) Close() error { f.closed = true; return nil }

// icmpFrame is an echo request from src to dst as a pod sends it.
func icmpFrame(t *testing.T, src, dst string) []byte {
	t.Helper()
	eth := &layers.Ethernet{SrcMAC: net.HardwareAddr{0xc6, 0x6d, 0x95, 0xcd, 0x34, 0xa2}, DstMAC: net.HardwareAddr{0x2a, 0x0a, 0xd9, 0x17, 0x44, 0x22}, EthernetType: layers.EthernetTypeIPv4}
	ip := &layers.IPv4{Version: 4, TTL: 63, Protocol: layers.IPProtocolICMPv4, SrcIP: net.ParseIP(src), DstIP: net.ParseIP(dst)}
	icmp := &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(layers.ICMPv4TypeEchoRequest, 0), Id: 7, Seq: 1}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
		eth, ip, icmp, gopacket.Payload(make([]byte, 56))); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func monitorDeps(t *testing.T, src *fakeSource) (deps, *string) {
	d := noDeps()
	var opened string
	d.openMonitor = func(_ context.Context, dir string, _ func()) (eventSource, error) { opened = dir; return src, nil }
	d.ifName = func(i int) (string, error) {
		switch i {
		case 34:
			return "lxc5f949d4fd7fa", nil
		case 2:
			return "eth0", nil
		}
		return "", fmt.Errorf("no ifindex %d", i)
	}
	return d, &opened
}

func TestMonitorLines(t *testing.T) {
	ping := icmpFrame(t, "10.0.0.85", "10.0.1.124")
	events := []monitorEvent{
		{CPU: 3, Program: bpf.ProgramNetdev, Reason: bpf.ReasonRedirectPeer, Endpoint: 1580, IfindexIn: 2, IfindexOut: 34, Len: uint32(len(ping)), Data: ping},
		{CPU: 1, Program: bpf.ProgramLXC, Reason: bpf.ReasonRedirectDirectRoute, Endpoint: 1445, IfindexIn: 34, IfindexOut: 2, Len: uint32(len(ping)), Data: ping},
		{CPU: 0, Program: bpf.ProgramLXC, Reason: bpf.ReasonNotTCPUDP, Endpoint: 1445, IfindexIn: 34, Len: uint32(len(ping)), Data: ping},
		{CPU: 0, Program: bpf.ProgramNetdev, Reason: bpf.ReasonNotIPv4, IfindexIn: 9, Len: 42, Data: make([]byte, 42)},
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	src := &fakeSource{events: events, lost: []uint64{0, 0, 5, 5, 12}, stop: cancel}
	d, opened := monitorDeps(t, src)
	r := runCtx(t, ctx, d, "", "monitor", "--node", "worker-1")
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.err)
	}
	want := `CPU 03: FROM 1580 to-endpoint: 98 bytes, interface lxc5f949d4fd7fa, orig-ip 10.0.0.85, to endpoint 1580
CPU 01: FROM 1445 to-network: 98 bytes, interface eth0, orig-ip 10.0.0.85
CPU 00: FROM 1445 to-stack: 98 bytes, interface lxc5f949d4fd7fa, orig-ip 10.0.0.85, reason not_tcp_udp: not TCP or UDP, which conntrack cannot look up for the programs
Lost 5 events: the ring buffer was full
CPU 00: FROM 0 to-stack: 42 bytes, interface ifindex 9, reason not_ipv4: not IPv4 (ARP, IPv6, VLAN-tagged)
Lost 7 events: the ring buffer was full
`
	if r.out != want {
		t.Errorf("output:\n%s\nwant:\n%s", r.out, want)
	}
	if *opened != "/sys/fs/bpf/routemode/worker-1" || !src.closed {
		t.Errorf("opened %q, closed %v", *opened, src.closed)
	}
	mustContain(t, "stderr", r.err, "Received 4 events (4 shown), lost 12")
}

func TestMonitorVeryVerboseDecodes(t *testing.T) {
	ping := icmpFrame(t, "10.0.0.85", "10.0.1.124")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	src := &fakeSource{events: []monitorEvent{
		{CPU: 3, Program: bpf.ProgramNetdev, Reason: bpf.ReasonRedirectPeer, Endpoint: 1580, IfindexIn: 2, IfindexOut: 34, Len: uint32(len(ping)), Data: ping},
	}, lost: []uint64{0}, stop: cancel}
	d, _ := monitorDeps(t, src)
	r := runCtx(t, ctx, d, "", "monitor", "--node", "n", "-vv")
	mustContain(t, "-vv output", r.out,
		"\nEthernet\t{Contents=[..14..] Payload=[..84..] SrcMAC=c6:6d:95:cd:34:a2 DstMAC=2a:0a:d9:17:44:22 EthernetType=IPv4",
		"\nIPv4\t{", "SrcIP=10.0.0.85 DstIP=10.0.1.124",
		"\nICMPv4\t{", "TypeCode=EchoRequest",
		"CPU 03: FROM 1580 to-endpoint: 98 bytes, interface lxc5f949d4fd7fa, orig-ip 10.0.0.85, to endpoint 1580, program from-netdev, in eth0, out lxc5f949d4fd7fa, 10.0.0.85 -> 10.0.1.124")
}

func TestMonitorFiltersAndJSON(t *testing.T) {
	a := icmpFrame(t, "10.0.0.85", "10.0.1.124")
	b := icmpFrame(t, "10.0.0.86", "10.0.1.7")
	events := []monitorEvent{
		{CPU: 1, Program: bpf.ProgramLXC, Reason: bpf.ReasonRedirectFIB, Endpoint: 1445, IfindexIn: 34, IfindexOut: 2, Len: 98, Data: a},
		{CPU: 1, Program: bpf.ProgramLXC, Reason: bpf.ReasonRedirectFIB, Endpoint: 1580, IfindexIn: 34, IfindexOut: 2, Len: 98, Data: b},
		{CPU: 1, Program: bpf.ProgramNetdev, Reason: bpf.ReasonRedirectPeer, Endpoint: 1445, IfindexIn: 2, IfindexOut: 34, Len: 98, Data: b},
	}
	for _, tc := range []struct {
		args []string
		want []uint32 // endpoints of the events shown
	}{
		{[]string{"--from-endpoint", "1445"}, []uint32{1445, 1445}},
		{[]string{"--related-to", "10.0.1.7"}, []uint32{1580, 1445}},
		{[]string{"--related-to", "10.0.1.124", "--from-endpoint", "1445"}, []uint32{1445}},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			src := &fakeSource{events: events, lost: []uint64{0, 0, 3}, stop: cancel}
			d, _ := monitorDeps(t, src)
			r := runCtx(t, ctx, d, "", append([]string{"monitor", "--node", "n", "-o", "json"}, tc.args...)...)
			if r.code != 0 {
				t.Fatalf("exit %d: %s", r.code, r.err)
			}
			var got []uint32
			var lost uint64
			for _, line := range strings.Split(strings.TrimSpace(r.out), "\n") {
				var j struct {
					monitorJSON
					Lost uint64 `json:"lost"`
				}
				if err := json.Unmarshal([]byte(line), &j); err != nil {
					t.Fatalf("%q: %v", line, err)
				}
				switch j.Type {
				case "trace":
					got = append(got, j.Endpoint)
					if j.Verdict == "" || j.Interface == "" || len(j.Data) != 98 || j.SrcIP == "" {
						t.Errorf("incomplete event: %s", line)
					}
				case "lost":
					lost += j.Lost
				}
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) || lost != 3 {
				t.Errorf("endpoints %v lost %d, want %v and 3", got, lost, tc.want)
			}
		})
	}
}

func TestMonitorUsageErrors(t *testing.T) {
	for args, want := range map[string]string{
		"--type drop":          "never drop a packet",
		"--type x":             `unknown --type "x"`,
		"--from-endpoint abc":  "is not an endpoint id",
		"--related-to fd00::1": "is not an IPv4 address",
		"-o yaml":              "unknown output format",
	} {
		r := run(t, noDeps(), "", append([]string{"monitor", "--node", "n"}, strings.Fields(args)...)...)
		if r.code == 0 {
			t.Errorf("%s: exit 0", args)
		}
		mustContain(t, args, r.err, want)
	}
}
