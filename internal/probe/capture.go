package probe

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// CaptureConfig selects what a Capture watches: frames on one interface (or
// every interface) of a namespace, classified by whether pod packets cross
// the wire encapsulated in UDP or plain.
type CaptureConfig struct {
	// NSPath is the namespace to capture in ("" = the caller's).
	NSPath string
	// Interface limits the capture to one device; "" captures on all.
	Interface string
	// TunnelPort is the UDP port of the encapsulation (e.g. 8472).
	TunnelPort int
	// Inner is the pod address range (e.g. 10.0.0.0/16).
	Inner netip.Prefix
}

// CaptureStats counts received frames (outgoing copies are skipped, so a
// frame crossing a bridge counts once, on the port it entered by).
type CaptureStats struct {
	Frames int64
	// TunnelUDP counts UDP datagrams from or to TunnelPort.
	TunnelUDP int64
	// Encapsulated counts TunnelUDP datagrams carrying VXLAN with an inner
	// IPv4 packet whose source and destination are both in Inner.
	Encapsulated int64
	// Plain counts IPv4 packets with source and destination in Inner that
	// are not encapsulated: native pod-to-pod traffic.
	Plain int64
}

func (s CaptureStats) String() string {
	return fmt.Sprintf("frames=%d tunnel_udp=%d encapsulated=%d plain=%d", s.Frames, s.TunnelUDP, s.Encapsulated, s.Plain)
}

// Capture is a running AF_PACKET capture.
type Capture struct {
	cfg  CaptureConfig
	fd   int
	mu   sync.Mutex
	st   CaptureStats
	stop chan struct{}
	done chan struct{}
	once sync.Once
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// StartCapture opens a raw packet socket in cfg.NSPath and starts counting.
func StartCapture(cfg CaptureConfig) (*Capture, error) {
	fd := -1
	err := InNS(cfg.NSPath, func() error {
		var err error
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
		if err != nil {
			return fmt.Errorf("opening packet socket: %w", err)
		}
		if cfg.Interface != "" {
			ifi, err := net.InterfaceByName(cfg.Interface)
			if err != nil {
				return err
			}
			if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index}); err != nil {
				return fmt.Errorf("binding packet socket to %s: %w", cfg.Interface, err)
			}
		}
		return nil
	})
	if err != nil {
		if fd >= 0 {
			unix.Close(fd)
		}
		return nil, err
	}
	tv := unix.NsecToTimeval((50 * time.Millisecond).Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(fd)
		return nil, err
	}
	c := &Capture{cfg: cfg, fd: fd, stop: make(chan struct{}), done: make(chan struct{})}
	go c.loop()
	return c, nil
}

// Snapshot returns the counts so far.
func (c *Capture) Snapshot() CaptureStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.st
}

// Reset zeroes the counters.
func (c *Capture) Reset() {
	c.mu.Lock()
	c.st = CaptureStats{}
	c.mu.Unlock()
}

// Stop ends the capture and returns the counts.
func (c *Capture) Stop() CaptureStats {
	c.once.Do(func() {
		close(c.stop)
		<-c.done
		unix.Close(c.fd)
	})
	return c.Snapshot()
}

func (c *Capture) loop() {
	defer close(c.done)
	buf := make([]byte, 65536)
	for {
		select {
		case <-c.stop:
			return
		default:
		}
		n, from, err := unix.Recvfrom(c.fd, buf, 0)
		if err != nil {
			if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
				continue
			}
			return
		}
		if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Pkttype == unix.PACKET_OUTGOING {
			continue
		}
		enc, tun, plain := Classify(buf[:n], c.cfg.TunnelPort, c.cfg.Inner)
		c.mu.Lock()
		c.st.Frames++
		if tun {
			c.st.TunnelUDP++
		}
		if enc {
			c.st.Encapsulated++
		}
		if plain {
			c.st.Plain++
		}
		c.mu.Unlock()
	}
}

// Classify looks at an Ethernet frame: tunnelUDP is a UDP datagram from or
// to port; encapsulated is such a datagram carrying VXLAN with an inner IPv4
// packet between two addresses in inner; plain is an IPv4 packet between two
// addresses in inner that is not tunnel UDP.
func Classify(frame []byte, port int, inner netip.Prefix) (encapsulated, tunnelUDP, plain bool) {
	src, dst, l4, proto, ok := ipv4(frame)
	if !ok {
		return false, false, false
	}
	if proto == unix.IPPROTO_UDP && len(l4) >= 8 {
		sp, dp := int(binary.BigEndian.Uint16(l4[0:])), int(binary.BigEndian.Uint16(l4[2:]))
		if sp == port || dp == port {
			// UDP header 8, VXLAN header 8, then the inner Ethernet frame.
			if len(l4) >= 16 {
				if is, id, _, _, ok := ipv4(l4[16:]); ok && inner.Contains(is) && inner.Contains(id) {
					encapsulated = true
				}
			}
			return encapsulated, true, false
		}
	}
	return false, false, inner.Contains(src) && inner.Contains(dst)
}

func ipv4(frame []byte) (src, dst netip.Addr, l4 []byte, proto int, ok bool) {
	if len(frame) < 14+20 || binary.BigEndian.Uint16(frame[12:]) != unix.ETH_P_IP {
		return
	}
	ip := frame[14:]
	ihl := int(ip[0]&0x0f) * 4
	if ip[0]>>4 != 4 || ihl < 20 || len(ip) < ihl {
		return
	}
	src = netip.AddrFrom4([4]byte(ip[12:16]))
	dst = netip.AddrFrom4([4]byte(ip[16:20]))
	return src, dst, ip[ihl:], int(ip[9]), true
}
