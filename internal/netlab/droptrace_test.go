package netlab

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/routemode/routemode/internal/privileged"
)

func TestParseDrops(t *testing.T) {
	trace := `# tracer: nop
#
#                                _-----=> irqs-off/BH-disabled
          <idle>-0       [001] ..s1.  5678.123456: kfree_skb: skbaddr=00000000c0ffee00 rx_sk=0000000000000000 protocol=2048 location=ip_rcv_finish_core+0x1a4/0x4c0 reason: IP_RPFILTER
 kworker/u8:3-4192    [000] b..1.  5679.000001: kfree_skb: skbaddr=00000000c0ffee01 rx_sk=0000000000000000 protocol=34525 location=ndisc_rcv+0x10/0x200 reason: NOT_SPECIFIED
some line that is not an event
`
	got := parseDrops(trace, time.Duration(1000)*time.Second)
	want := []Drop{
		{At: time.Unix(6678, 123456000), Reason: "IP_RPFILTER", Location: "ip_rcv_finish_core+0x1a4/0x4c0", Protocol: 2048},
		{At: time.Unix(6679, 1000), Reason: "NOT_SPECIFIED", Location: "ndisc_rcv+0x10/0x200", Protocol: 34525},
	}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for i := range want {
		// Float seconds: stamps are microseconds, so compare to that.
		if g, w := got[i], want[i]; g.At.Sub(w.At).Abs() > time.Microsecond || g.Reason != w.Reason || g.Location != w.Location || g.Protocol != w.Protocol {
			t.Errorf("drop %d: got %v, want %v", i, g, w)
		}
	}
	if s := SummarizeDrops(append(got, got[0])); !slices.Equal(s, []string{
		"2 IP_RPFILTER at ip_rcv_finish_core+0x1a4/0x4c0", "1 NOT_SPECIFIED at ndisc_rcv+0x10/0x200"}) {
		t.Errorf("summary %q", s)
	}
	if a := DropsAround(got, []time.Time{time.Unix(6679, 500e6)}, 600*time.Millisecond); len(a) != 1 || a[0].Reason != "NOT_SPECIFIED" {
		t.Errorf("drops around 6679.5 s: %v", a)
	}
}

// A UDP datagram to a loopback port nobody listens on is dropped with
// reason NO_SOCKET: the trace must show it, stamped between the send's
// bounds, and leave neither instance nor mount behind.
func TestDropTraceSeesADrop(t *testing.T) {
	privileged.Require(t, "mounts tracefs")
	d, err := StartDropTrace()
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			_, _ = d.Stop()
		}
	})
	// A port just freed: nobody listens on it.
	l, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	to := l.LocalAddr().(*net.UDPAddr)
	l.Close()
	c, err := net.DialUDP("udp4", nil, to)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	before := time.Now()
	if _, err := c.Write([]byte("to nobody")); err != nil {
		t.Fatal(err)
	}
	after := time.Now()
	drops, err := d.Stop()
	stopped = true
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(drops, func(dr Drop) bool {
		return dr.Reason == "NO_SOCKET" && strings.HasPrefix(dr.Location, "__udp4_lib_rcv")
	})
	if i < 0 {
		t.Fatalf("no NO_SOCKET drop in __udp4_lib_rcv among %v", drops)
	}
	// The clocks are read microseconds apart: allow a millisecond.
	if at := drops[i].At; at.Before(before.Add(-time.Millisecond)) || at.After(after.Add(time.Millisecond)) {
		t.Errorf("drop stamped %s, sent between %s and %s", at.Format(time.StampMicro), before.Format(time.StampMicro), after.Format(time.StampMicro))
	}
	if left, _ := filepath.Glob(filepath.Join(os.TempDir(), fmt.Sprintf("%s%d-*", dropTraceName, os.Getpid()))); len(left) > 0 {
		t.Errorf("left behind: %v", left)
	}
}
