package probe

import (
	"context"
	"encoding/binary"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/routemode/routemode/internal/privileged"

	"golang.org/x/sys/unix"
)

var loopback = netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), 0)

func TestStreamNoLoss(t *testing.T) {
	e, err := StartEcho("", loopback)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	s, err := StartStream(StreamConfig{Target: e.Addr(), Rate: 2000})
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "300 probes answered", func() bool { return s.Snapshot().Received >= 300 })
	st := s.Stop()
	t.Logf("%s", st)
	if st.Sent < 300 || st.Lost != 0 || st.Received != st.Sent || st.Duplicates != 0 {
		t.Errorf("loopback stream: %s; want ~600 sent, none lost", st)
	}
	if again := s.Stop(); !reflect.DeepEqual(again, st) {
		t.Errorf("second Stop returned %s", again)
	}
}

func TestStreamCountsLoss(t *testing.T) {
	// Nothing listens at the target: every probe is lost.
	e, err := StartEcho("", loopback)
	if err != nil {
		t.Fatal(err)
	}
	dead := e.Addr()
	e.Close()
	s, err := StartStream(StreamConfig{Target: dead, Rate: 1000, Drain: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	st := s.Stop()
	if st.Sent == 0 || st.Lost != st.Sent || st.Received != 0 {
		t.Errorf("stream to nowhere: %s; want all lost", st)
	}
	if st.LargestGap < 80*time.Millisecond {
		t.Errorf("largest gap %s, want about the whole run", st.LargestGap)
	}
	// The first lost probes' send times, one probe period apart.
	if len(st.LostSent) != maxLostSent {
		t.Fatalf("lost_sent has %d times; want the first %d", len(st.LostSent), maxLostSent)
	}
	for i := 1; i < len(st.LostSent); i++ {
		if d := st.LostSent[i].Sub(st.LostSent[i-1]); d != time.Millisecond {
			t.Errorf("lost probes %d and %d were due %s apart; want 1ms at 1,000/s", i-1, i, d)
		}
	}
}

func TestStreamDuplicatesAndReordering(t *testing.T) {
	s := &Stream{maxSeq: -1, lastEvent: time.Now()}
	s.sent.Store(4)
	now := time.Now()
	for _, seq := range []uint64{0, 2, 1, 2, 3} {
		s.record(header{seq: seq, sent: now}, now)
	}
	st := s.Snapshot()
	if st.Received != 4 || st.Duplicates != 1 || st.Reordered != 1 || st.Lost != 0 {
		t.Errorf("stats %s, want 4 received, 1 duplicate, 1 reordered", st)
	}
}

func TestHeaderRoundTrip(t *testing.T) {
	b := make([]byte, headerLen)
	at := time.Unix(1700000000, 123456789)
	header{stream: 7, seq: 9, sent: at}.put(b)
	h, ok := parseHeader(b)
	if !ok || h.stream != 7 || h.seq != 9 || !h.sent.Equal(at) {
		t.Errorf("round trip %+v %v", h, ok)
	}
	if _, ok := parseHeader([]byte("XXXX0000000000000000000000000")); ok {
		t.Error("accepted a datagram without magic")
	}
}

func TestPinger(t *testing.T) {
	e, err := StartEcho("", loopback)
	if err != nil {
		t.Fatal(err)
	}
	p, err := NewPinger("", loopback)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	ctx := context.Background()
	if rtt, err := p.Ping(ctx, e.Addr(), 0, time.Second); err != nil || rtt <= 0 {
		t.Errorf("ping: %s %v", rtt, err)
	}
	if _, err := PingOnce(ctx, "", e.Addr(), 1400, true, time.Second); err != nil {
		t.Errorf("DF ping on loopback: %v", err)
	}
	e.Close()
	if _, err := p.PingRetry(ctx, e.Addr(), 2, 50*time.Millisecond); err == nil {
		t.Error("ping of a closed responder succeeded")
	}
}

func TestTCPCheck(t *testing.T) {
	e, err := StartTCPEcho("", loopback)
	if err != nil {
		t.Fatal(err)
	}
	c, err := StartTCPCheck(context.Background(), TCPCheckConfig{Target: e.Addr(), Interval: 5 * time.Millisecond, Timeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "messages echoed", func() bool { return c.Snapshot().Messages >= 10 })
	if st := c.Snapshot(); st.Resets+st.Errors != 0 {
		t.Errorf("healthy connection: %s", st)
	}
	e.Close() // closes the connection under the checker
	eventually(t, "the closed connection noticed", func() bool { st := c.Snapshot(); return st.Resets+st.Errors > 0 })
	st := c.Stop()
	t.Logf("%s", st)
	if st.Resets+st.Errors == 0 {
		t.Errorf("a closed connection went unnoticed: %s", st)
	}
}

// frame builds an Ethernet/IPv4/UDP frame.
func frame(src, dst string, sport, dport int, payload []byte) []byte {
	b := make([]byte, 14+20+8+len(payload))
	binary.BigEndian.PutUint16(b[12:], 0x0800)
	ip := b[14:]
	ip[0] = 0x45
	ip[9] = 17
	s, d := netip.MustParseAddr(src).As4(), netip.MustParseAddr(dst).As4()
	copy(ip[12:], s[:])
	copy(ip[16:], d[:])
	udp := ip[20:]
	binary.BigEndian.PutUint16(udp[0:], uint16(sport))
	binary.BigEndian.PutUint16(udp[2:], uint16(dport))
	copy(udp[8:], payload)
	return b
}

func TestClassify(t *testing.T) {
	pods := netip.MustParsePrefix("10.0.0.0/16")
	inner := frame("10.0.0.5", "10.0.1.7", 1000, 7000, nil)
	vxlan := append(make([]byte, 8), inner...)
	cases := map[string]struct {
		frame              []byte
		enc, tunnel, plain bool
	}{
		"vxlan with pod packet": {frame("192.168.0.120", "192.168.0.130", 40000, 8472, vxlan), true, true, false},
		"vxlan, other inner":    {frame("192.168.0.120", "192.168.0.130", 40000, 8472, append(make([]byte, 8), frame("1.1.1.1", "10.0.1.7", 1, 2, nil)...)), false, true, false},
		"native pod packet":     {inner, false, false, true},
		"node to node":          {frame("192.168.0.120", "192.168.0.130", 1, 2, nil), false, false, false},
		"runt":                  {[]byte{1, 2, 3}, false, false, false},
	}
	for name, tc := range cases {
		enc, tun, plain := Classify(tc.frame, 8472, pods)
		if enc != tc.enc || tun != tc.tunnel || plain != tc.plain {
			t.Errorf("%s: got enc=%v tunnel=%v plain=%v", name, enc, tun, plain)
		}
	}
}

// TestCaptureAndNamespaces opens sockets inside a fresh namespace and
// counts packets there with the capture (needs root).
func TestCaptureAndNamespaces(t *testing.T) {
	privileged.Require(t, "creates a network namespace and a packet socket")
	path := newNS(t)
	c, err := StartCapture(CaptureConfig{NSPath: path, Interface: "lo", TunnelPort: 8472, Inner: netip.MustParsePrefix("10.0.0.0/16")})
	if err != nil {
		t.Fatal(err)
	}
	// A VXLAN-looking datagram to 127.0.0.1:8472 inside the namespace.
	conn, err := ListenUDP(path, loopback)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	inner := frame("10.0.0.5", "10.0.1.7", 1, 2, nil)
	for range 3 {
		if _, err := conn.WriteToUDPAddrPort(append(make([]byte, 8), inner...), netip.MustParseAddrPort("127.0.0.1:8472")); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "3 frames captured", func() bool { return c.Snapshot().Encapsulated >= 3 })
	st := c.Stop()
	if st.Encapsulated != 3 {
		t.Errorf("capture in the namespace: %s, want 3 encapsulated", st)
	}
	// The echo responder in the namespace is not reachable from here.
	e, err := StartEcho(path, netip.MustParseAddrPort("127.0.0.1:7000"))
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if _, err := PingOnce(context.Background(), path, e.Addr(), 0, false, time.Second); err != nil {
		t.Errorf("ping inside the namespace: %v", err)
	}
	if _, err := PingOnce(context.Background(), "", e.Addr(), 0, false, 100*time.Millisecond); err == nil {
		t.Errorf("a socket outside the namespace reached the responder inside it")
	}
}

// TestSocketDropsAreCounted fills a small receive buffer and checks that
// the kernel's drop counter reaches the tool, so a lost probe can be told
// apart from a probe the tool itself dropped.
func TestSocketDropsAreCounted(t *testing.T) {
	e, err := StartEcho("", loopback)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	rc, _ := e.conn.SyscallConn()
	_ = rc.Control(func(fd uintptr) { _ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, 1) })
	// Stall the responder's reader by flooding faster than it can answer.
	c, err := ListenUDP("", loopback)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 1400)
	header{stream: 1}.put(buf)
	for range 5000 {
		_, _ = c.WriteToUDPAddrPort(buf, e.Addr())
	}
	deadline := time.Now().Add(30 * time.Second)
	for e.Drops() == 0 && time.Now().Before(deadline) {
		_, _ = c.WriteToUDPAddrPort(buf, e.Addr())
		time.Sleep(time.Millisecond)
	}
	if e.Drops() == 0 {
		t.Errorf("no socket drop counted with a tiny receive buffer under a flood")
	}
	t.Logf("responder counted %d socket drops", e.Drops())
}

// An answer the responder cannot send is counted, with its error, not
// dropped unseen: shut down for writing, its socket still receives
// probes but every send fails with EPIPE.
func TestEchoCountsFailedAnswers(t *testing.T) {
	e, err := StartEcho("", loopback)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	rc, _ := e.conn.SyscallConn()
	// An unconnected socket answers ENOTCONN, and is shut down all the
	// same.
	_ = rc.Control(func(fd uintptr) { _ = unix.Shutdown(int(fd), unix.SHUT_WR) })
	s, err := StartStream(StreamConfig{Target: e.Addr(), Rate: 1000, Drain: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "failed answers", func() bool { n, _ := e.SendErrors(); return n >= 20 })
	st := s.Stop()
	n, last := e.SendErrors()
	t.Logf("stream %s; responder: %d failed answers, last %q", st, n, last)
	if st.Received != 0 || e.Answered() != 0 {
		t.Errorf("answers went out from a socket shut down for writing: stream %s, responder answered %d", st, e.Answered())
	}
	if !strings.Contains(last, "broken pipe") {
		t.Errorf("last failed answer: %q; want EPIPE's broken pipe", last)
	}
}

// A connected stream counts only answers from its target: an echo on the
// wildcard address answers a probe to 127.0.0.2 from 127.0.0.1, which an
// unconnected stream counts and a connected one must not.
func TestStreamConnect(t *testing.T) {
	e, err := StartEcho("", netip.AddrPortFrom(netip.IPv4Unspecified(), 0))
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	port := e.Addr().Port()
	for _, tc := range []struct {
		name     string
		target   string
		connect  bool
		answered bool
	}{
		{"connected to the answering address", "127.0.0.1", true, true},
		{"unconnected, answered from another address", "127.0.0.2", false, true},
		{"connected, answered from another address", "127.0.0.2", true, false},
	} {
		// Stop returns once every probe is answered; a stream that must
		// get no answer needs to wait only briefly for one to show.
		drain := time.Duration(0)
		if !tc.answered {
			drain = 100 * time.Millisecond
		}
		s, err := StartStream(StreamConfig{Target: netip.AddrPortFrom(netip.MustParseAddr(tc.target), port), Connect: tc.connect,
			Rate: 1000, Drain: drain})
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond) // the stream's sending window
		st := s.Stop()
		if got := st.Sent > 0 && st.Received == st.Sent; got != tc.answered || (!tc.answered && st.Received != 0) {
			t.Errorf("%s: %s", tc.name, st)
		}
	}
}

// eventually fails t unless ok holds within 30 s: generous, so a loaded
// machine only makes the test slower, never red.
func eventually(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
