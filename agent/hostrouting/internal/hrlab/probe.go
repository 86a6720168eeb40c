//go:build linux

/*
Copyright 2026 The routemode Authors.

Licensed under the Apache License, Version 2.0.
*/

package hrlab

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// ProbePort is the UDP port of the echo server.
const ProbePort = 7946

// StreamStats sums up a probe stream. A probe counts as delivered when its
// echo came back, so both directions of the path are covered.
type StreamStats struct {
	Sent       int
	Echoed     int
	Lost       int
	SendErrors int
	// MaxGap is the longest time between two consecutive echoes.
	MaxGap time.Duration
	// RcvbufErrors is UDP RcvbufErrors of both pods during the stream:
	// probes the sockets dropped, not the datapath.
	RcvbufErrors uint64
	// LostAt is when each lost probe was sent, after the stream started
	// (the first 20), to match losses with what the test did then.
	LostAt []time.Duration
}

// Stream sends numbered UDP probes from one pod to an echo server in
// another at a fixed rate.
type Stream struct {
	client, server *net.UDPConn
	pods           [2]*Pod
	rcvbuf0        uint64
	stop           chan struct{}
	wg             sync.WaitGroup

	mu         sync.Mutex
	sent       int
	sendErrors int
	echoed     map[uint64]bool
	sentAt     []time.Duration
	seqs       []uint64
	start      time.Time
	lastEcho   time.Time
	maxGap     time.Duration
}

// StartStream starts a probe stream from client to server at rate probes
// per second (both directions through the datapath).
func StartStream(client, server *Pod, rate int) (*Stream, error) {
	return StartStreamVia(client, server, netip.AddrPortFrom(server.IP, ProbePort), rate)
}

// StartStreamVia is StartStream with the client sending to dst, an address
// that leads to server's echo port (a Service's): only echoes that come
// back from dst count, since the client's socket is connected to it.
func StartStreamVia(client, server *Pod, dst netip.AddrPort, rate int) (*Stream, error) {
	s := &Stream{stop: make(chan struct{}), echoed: make(map[uint64]bool), pods: [2]*Pod{client, server}}
	// Sockets belong to the namespace they are created in; after that any
	// goroutine may use them.
	err := server.Run(func() error {
		var err error
		s.server, err = net.ListenUDP("udp4", &net.UDPAddr{IP: server.IP.AsSlice(), Port: ProbePort})
		if err != nil {
			return err
		}
		return forceBuffers(s.server)
	})
	if err != nil {
		return nil, err
	}
	err = client.Run(func() error {
		var err error
		s.client, err = net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(dst))
		if err != nil {
			return err
		}
		return forceBuffers(s.client)
	})
	if err != nil {
		s.server.Close()
		return nil, err
	}
	s.rcvbuf0 = s.rcvbufErrors()
	s.wg.Add(3)
	go s.echo()
	go s.receive()
	go s.send(rate)
	return s, nil
}

func (s *Stream) echo() {
	defer s.wg.Done()
	buf := make([]byte, 64)
	for {
		n, from, err := s.server.ReadFromUDPAddrPort(buf)
		if err != nil {
			return // closed by Stop
		}
		_ = s.server.SetWriteDeadline(time.Now().Add(50 * time.Millisecond))
		_, _ = s.server.WriteToUDPAddrPort(buf[:n], from)
	}
}

func (s *Stream) receive() {
	defer s.wg.Done()
	buf := make([]byte, 64)
	for {
		n, err := s.client.Read(buf)
		if errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrDeadlineExceeded) {
			return // Stop
		}
		if err != nil {
			continue // e.g. an ICMP error reported on the connected socket
		}
		if n < 8 {
			continue
		}
		now := time.Now()
		seq := binary.BigEndian.Uint64(buf)
		s.mu.Lock()
		if !s.lastEcho.IsZero() && now.Sub(s.lastEcho) > s.maxGap {
			s.maxGap = now.Sub(s.lastEcho)
		}
		s.lastEcho = now
		s.echoed[seq] = true
		s.mu.Unlock()
	}
}

// send writes probes in 1 ms batches. Writes carry a deadline: a sender that
// blocks on a broken path would stall the whole stream (datapath.md 7).
func (s *Stream) send(rate int) {
	defer s.wg.Done()
	const tick = time.Millisecond
	t := time.NewTicker(tick)
	defer t.Stop()
	start := time.Now()
	s.mu.Lock()
	s.start = start
	s.mu.Unlock()
	var seq uint64
	buf := make([]byte, 16)
	for {
		select {
		case <-s.stop:
			return
		case now := <-t.C:
			due := uint64(now.Sub(start).Seconds() * float64(rate))
			// After a scheduling stall (GC, a busy CPU), skip the missed
			// probes instead of bursting them: a burst measures socket
			// buffers, not the datapath.
			if maxBurst := uint64(rate/1000 + 4); due > seq+maxBurst {
				seq = due - maxBurst
			}
			for ; seq < due; seq++ {
				binary.BigEndian.PutUint64(buf, seq)
				_ = s.client.SetWriteDeadline(time.Now().Add(20 * time.Millisecond))
				_, err := s.client.Write(buf)
				s.mu.Lock()
				s.sent++
				s.sentAt = append(s.sentAt, time.Since(start))
				s.seqs = append(s.seqs, seq)
				if err != nil {
					s.sendErrors++
				}
				s.mu.Unlock()
			}
		}
	}
}

// Since is the time since the stream started sending.
func (s *Stream) Since() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return time.Since(s.start).Round(time.Millisecond)
}

// Snapshot returns the counts so far (Lost is unanswered probes, including
// those still in flight).
func (s *Stream) Snapshot() StreamStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := StreamStats{Sent: s.sent, Echoed: len(s.echoed), Lost: s.sent - len(s.echoed), SendErrors: s.sendErrors, MaxGap: s.maxGap}
	for i, at := range s.sentAt {
		if !s.echoed[s.seqs[i]] && len(st.LostAt) < 20 {
			st.LostAt = append(st.LostAt, at.Round(time.Millisecond))
		}
	}
	return st
}

// Stop stops sending, waits drain for the last echoes and returns the
// final counts.
func (s *Stream) Stop(drain time.Duration) StreamStats {
	close(s.stop)
	time.Sleep(drain)
	_ = s.client.SetReadDeadline(time.Now())
	s.server.Close()
	s.wg.Wait()
	s.client.Close()
	st := s.Snapshot()
	st.RcvbufErrors = s.rcvbufErrors() - s.rcvbuf0
	return st
}

// forceBuffers gives the socket 4 MiB buffers, past net.core.rmem_max, so
// that a probe burst after a scheduling stall is not dropped by the socket.
func forceBuffers(c *net.UDPConn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	err = rc.Control(func(fd uintptr) {
		for _, opt := range []int{unix.SO_RCVBUFFORCE, unix.SO_SNDBUFFORCE} {
			if e := unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, opt, 4<<20); e != nil {
				serr = e
			}
		}
	})
	if err != nil {
		return err
	}
	return serr
}

func (s *Stream) rcvbufErrors() uint64 {
	var total uint64
	for _, p := range s.pods {
		_ = p.Run(func() error {
			n, err := udpRcvbufErrors()
			total += n
			return err
		})
	}
	return total
}

// udpRcvbufErrors reads Udp RcvbufErrors of the calling thread's namespace.
func udpRcvbufErrors() (uint64, error) { return SNMP("Udp:", "RcvbufErrors") }

// SNMP reads one counter of /proc/net/snmp (proto "Ip:", "Udp:", ...) in
// the calling thread's network namespace.
func SNMP(proto, field string) (uint64, error) {
	b, err := os.ReadFile("/proc/thread-self/net/snmp")
	if err != nil {
		return 0, err
	}
	var head []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] != proto {
			continue
		}
		if head == nil {
			head = f
			continue
		}
		if i := slices.Index(head, field); i > 0 && i < len(f) {
			return strconv.ParseUint(f[i], 10, 64)
		}
	}
	return 0, fmt.Errorf("no %s %s in /proc/net/snmp", proto, field)
}
