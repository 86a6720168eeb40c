//go:build linux

/*
Copyright 2026 The routemode Authors.

Licensed under the Apache License, Version 2.0.
*/

// Package bench measures the pod datapath of routemode's host-routing modes
// on a two-node namespace lab (internal/netlab, point-to-point underlay): TCP
// request/response rate, 64-byte UDP packet rate and TCP bulk throughput,
// for node-to-node traffic and for pod-to-pod traffic in each mode.
//
// Run it with hack/bpf/bench.sh (make bench-datapath); it is a benchmark,
// not part of `go test ./...`.
//
// The traffic generators use blocking sockets on OS threads pinned to one
// CPU each (client and server on different CPUs). The request/response
// test reads and writes through raw system calls (syscall.RawSyscall, which
// does not tell Go's scheduler about the call): with ordinary ones every
// blocking read hands the thread's P to another thread and takes one back,
// futex wake-ups that doubled the CPU cost of a transaction and hid the
// datapath's share of it. The streaming tests rarely block and use ordinary
// system calls.
package bench

import (
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Peer is one end of a measurement: a namespace and an address in it.
type Peer struct {
	NSPath string
	IP     netip.Addr
	CPU    int // -1: not pinned
	// RealTime runs the peer's thread SCHED_FIFO for TCPRR, so that on a
	// busy machine it is not queued behind other work whenever a packet
	// wakes it. Ignored for the other kinds, whose threads may never sleep.
	RealTime bool
}

// Kind is a traffic pattern.
type Kind string

const (
	// TCPRR is netperf TCP_RR: one connection, 1-byte request, 1-byte
	// response, one transaction in flight. Result: transactions/s.
	TCPRR Kind = "tcp_rr"
	// TCPRRPoll is TCPRR with both sides polling their socket instead of
	// sleeping in read (sockperf --busy-wait). Without a wake-up and a
	// context switch per message, the datapath's own cost is a larger part
	// of each transaction; on a VM, where a cross-CPU wake-up is expensive,
	// this is the comparison that shows it.
	TCPRRPoll Kind = "tcp_rr_poll"
	// UDP64 is a one-way stream of 64-byte UDP payloads. Result: packets/s
	// received.
	UDP64 Kind = "udp64"
	// UDP64Batch is UDP64 with sendmmsg/recvmmsg moving 64 datagrams per
	// system call, as packet-rate tools do: on a VM where a system call
	// costs microseconds, it takes the per-packet cost of the sockets out
	// of the way so that the datapath's share shows. Result: packets/s.
	UDP64Batch Kind = "udp64_batch"
	// TCPStream is netperf TCP_STREAM: one connection, 128 KiB writes.
	// Result: Gbit/s received.
	TCPStream Kind = "tcp_stream"
)

// Result is one measurement.
type Result struct {
	// Rate is transactions/s, packets/s or Gbit/s over the measured window.
	Rate float64
	// CPU is the CPU time the client and server threads used per
	// transaction, per packet received or per KiB received, warm-up
	// included. The packet path runs in softirq context on the sending
	// thread's CPU and this kernel does no IRQ time accounting, so it is
	// charged to these threads: the cost of the datapath plus the
	// syscalls. Unlike Rate it barely moves when other work competes for
	// the CPUs.
	CPU time.Duration
}

// threadCPU is the calling thread's CPU time.
func threadCPU() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts); err != nil {
		return 0
	}
	return time.Duration(ts.Nano())
}

// Measure runs kind from client to server for d after a warm-up. Its two
// threads block in system calls without releasing their Ps and spin in
// loops a stop-the-world may wait long for: GOMAXPROCS must leave at least
// one P for the rest of the program, and the garbage collector should be
// off (debug.SetGCPercent(-1)) while measuring.
func Measure(kind Kind, client, server Peer, port int, warmup, d time.Duration) (Result, error) {
	type outcome struct {
		r   Result
		err error
	}
	done := make(chan outcome, 1)
	go func() {
		r, err := measure(kind, client, server, port, warmup, d)
		done <- outcome{r, err}
	}()
	// A lost SYN or a wedged thread must fail the run, not hang it.
	select {
	case o := <-done:
		return o.r, o.err
	case <-time.After(warmup + d + 15*time.Second):
		return Result{}, fmt.Errorf("%s measurement did not finish", kind)
	}
}

func measure(kind Kind, client, server Peer, port int, warmup, d time.Duration) (Result, error) {
	switch kind {
	case TCPRR:
		return tcpRR(client, server, port, warmup, d, false)
	}
	// Threads that may never sleep (pollers, flood senders and their
	// receivers, bulk transfers) must not be real-time: they would starve
	// everything else on their CPU, ksoftirqd and the Go runtime included.
	client.RealTime, server.RealTime = false, false
	switch kind {
	case TCPRRPoll:
		return tcpRR(client, server, port, warmup, d, true)
	case UDP64:
		return udp64(client, server, port, warmup, d, 1)
	case UDP64Batch:
		return udp64(client, server, port, warmup, d, udpBatch)
	case TCPStream:
		return tcpStream(client, server, port, warmup, d)
	}
	return Result{}, fmt.Errorf("unknown kind %q", kind)
}

// onThread runs fn on a new OS thread in p's namespace, pinned to p.CPU.
// The thread is never unlocked, so Go discards it afterwards.
func onThread(p Peer, fn func() error) <-chan error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		ns, err := netns.GetFromPath(p.NSPath)
		if err != nil {
			errc <- err
			return
		}
		err = netns.Set(ns)
		ns.Close()
		if err != nil {
			errc <- err
			return
		}
		// The highest CFS weight (or a real-time policy) keeps other work
		// on a shared machine from dominating the comparison.
		_ = unix.Setpriority(unix.PRIO_PROCESS, unix.Gettid(), -20)
		if p.RealTime {
			attr := unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: unix.SCHED_FIFO, Priority: 10}
			if err := unix.SchedSetAttr(0, &attr, 0); err != nil {
				errc <- fmt.Errorf("SCHED_FIFO: %w", err)
				return
			}
		}
		if p.CPU >= 0 {
			var set unix.CPUSet
			set.Set(p.CPU)
			if err := unix.SchedSetaffinity(0, &set); err != nil {
				errc <- fmt.Errorf("pin to CPU %d: %w", p.CPU, err)
				return
			}
		}
		errc <- fn()
	}()
	return errc
}

func sockaddr(ip netip.Addr, port int) *unix.SockaddrInet4 {
	return &unix.SockaddrInet4{Addr: ip.As4(), Port: port}
}

// listenTCP returns a listening socket; ready is closed once it listens.
func listenTCP(ip netip.Addr, port int) (int, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
	if err := unix.Bind(fd, sockaddr(ip, port)); err != nil {
		unix.Close(fd)
		return -1, err
	}
	if err := unix.Listen(fd, 4); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

func dialTCP(ip netip.Addr, port int) (int, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	// A SYN lost to a path that is still being set up would stall for a
	// second; fail fast instead.
	tv := unix.NsecToTimeval(int64(3 * time.Second))
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv)
	if err := unix.Connect(fd, sockaddr(ip, port)); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("connect %s:%d: %w", ip, port, err)
	}
	return fd, nil
}

// server runs accept-and-serve in its own thread; the returned channel
// yields its error once the client has gone, and *cpu its CPU time.
func server(p Peer, port int, cpu *time.Duration, serve func(fd int) error) (<-chan error, error) {
	ready := make(chan error, 1)
	done := onThread(p, func() error {
		lfd, err := listenTCP(p.IP, port)
		ready <- err
		if err != nil {
			return err
		}
		defer unix.Close(lfd)
		fd, _, err := unix.Accept4(lfd, unix.SOCK_CLOEXEC)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
		c0 := threadCPU()
		err = serve(fd)
		*cpu = threadCPU() - c0
		return err
	})
	select {
	case err := <-ready:
		return done, err
	case err := <-done:
		return nil, err
	}
}

// rawRead and rawWrite bypass the Go scheduler's system call hooks: the
// calling thread keeps its P while it blocks. Only for the dedicated,
// locked measurement threads, and only for calls that return soon.
// Go's preemption signals interrupt them (EINTR, not restarted on sockets
// with a timeout): retry.
func rawRead(fd int, b []byte) (int, error) {
	return rawIO(unix.SYS_READ, fd, b, 0)
}

func rawWrite(fd int, b []byte) (int, error) {
	return rawIO(unix.SYS_WRITE, fd, b, 0)
}

func rawRecvDontWait(fd int, b []byte) (int, error) {
	return rawIO(unix.SYS_RECVFROM, fd, b, unix.MSG_DONTWAIT)
}

func rawIO(trap uintptr, fd int, b []byte, flags uintptr) (int, error) {
	for {
		n, _, e := unix.RawSyscall6(trap, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), flags, 0, 0)
		switch e {
		case 0:
			return int(n), nil
		case unix.EINTR:
			continue
		}
		return -1, e
	}
}

// readOne reads one byte, blocking or polling.
func readOne(fd int, buf []byte, poll bool) (int, error) {
	if !poll {
		return rawRead(fd, buf)
	}
	for {
		n, err := rawRecvDontWait(fd, buf)
		if err == unix.EAGAIN {
			continue
		}
		return n, err
	}
}

func tcpRR(client, srv Peer, port int, warmup, d time.Duration, poll bool) (Result, error) {
	var scpu, ccpu time.Duration
	var total int
	done, err := server(srv, port, &scpu, func(fd int) error {
		buf := make([]byte, 1)
		for {
			n, err := readOne(fd, buf, poll)
			if n <= 0 || err != nil {
				return nil
			}
			if _, err := rawWrite(fd, buf[:n]); err != nil {
				return nil
			}
		}
	})
	if err != nil {
		return Result{}, err
	}
	var rate float64
	cerr := <-onThread(client, func() error {
		fd, err := dialTCP(srv.IP, port)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
		c0 := threadCPU()
		defer func() { ccpu = threadCPU() - c0 }()
		buf := []byte{'x'}
		rate, err = window(warmup, d, func() error {
			if _, err := rawWrite(fd, buf); err != nil {
				return err
			}
			if r, err := readOne(fd, buf, poll); r != 1 || err != nil {
				return fmt.Errorf("read response: %d, %w", r, err)
			}
			total++
			return nil
		}, func() float64 { return float64(total) })
		return err
	})
	err = errors.Join(cerr, <-done)
	return Result{Rate: rate, CPU: perOp(ccpu+scpu, uint64(total))}, err
}

// window repeats op for warmup, then for d, and returns how fast count grew
// per second over the second part.
func window(warmup, d time.Duration, op func() error, count func() float64) (float64, error) {
	start := time.Now()
	measureFrom, end := start.Add(warmup), start.Add(warmup+d)
	var (
		t0 time.Time
		c0 float64
	)
	for {
		if err := op(); err != nil {
			return 0, err
		}
		now := time.Now()
		if now.Before(measureFrom) {
			continue
		}
		if t0.IsZero() {
			t0, c0 = now, count()
			continue
		}
		if !now.Before(end) {
			return (count() - c0) / now.Sub(t0).Seconds(), nil
		}
	}
}

func perOp(cpu time.Duration, n uint64) time.Duration {
	if n == 0 {
		return 0
	}
	return cpu / time.Duration(n)
}

func tcpStream(client, srv Peer, port int, warmup, d time.Duration) (Result, error) {
	var received atomic.Uint64
	var scpu, ccpu time.Duration
	done, err := server(srv, port, &scpu, func(fd int) error {
		buf := make([]byte, 256<<10)
		for {
			n, err := unix.Read(fd, buf)
			if n <= 0 || err != nil {
				return nil
			}
			received.Add(uint64(n))
		}
	})
	if err != nil {
		return Result{}, err
	}
	var rate float64
	cerr := <-onThread(client, func() error {
		fd, err := dialTCP(srv.IP, port)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		c0 := threadCPU()
		defer func() { ccpu = threadCPU() - c0 }()
		buf := make([]byte, 128<<10)
		rate, err = window(warmup, d, func() error {
			_, err := unix.Write(fd, buf)
			return err
		}, func() float64 { return float64(received.Load()) * 8 / 1e9 })
		return err
	})
	err = errors.Join(cerr, <-done)
	return Result{Rate: rate, CPU: perOp(ccpu+scpu, received.Load()/1024)}, err
}

// udpBatch is how many datagrams UDP64Batch moves per system call.
const udpBatch = 64

// udp64 floods 64-byte datagrams from client to srv; batch > 1 sends and
// receives them with sendmmsg/recvmmsg, batch at a time.
func udp64(client, srv Peer, port int, warmup, d time.Duration, batch int) (Result, error) {
	var (
		received   atomic.Uint64
		stop       atomic.Bool
		scpu, ccpu time.Duration
	)
	ready := make(chan error, 1)
	done := onThread(srv, func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err == nil {
			_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 4<<20)
			tv := unix.NsecToTimeval(int64(50 * time.Millisecond))
			_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
			err = unix.Bind(fd, sockaddr(srv.IP, port))
		}
		ready <- err
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		c0 := threadCPU()
		recv := newMmsgs(batch, 2048)
		for !stop.Load() {
			// SO_RCVTIMEO bounds the wait, so the loop sees stop.
			if n := recv.recv(fd); n > 0 {
				received.Add(uint64(n))
			}
		}
		scpu = threadCPU() - c0
		return nil
	})
	if err := <-ready; err != nil {
		return Result{}, err
	}
	var rate float64
	cerr := <-onThread(client, func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		if err := unix.Connect(fd, sockaddr(srv.IP, port)); err != nil {
			return err
		}
		c0 := threadCPU()
		defer func() { ccpu = threadCPU() - c0 }()
		send := newMmsgs(batch, 64)
		rate, err = window(warmup, d, func() error {
			// ECONNREFUSED from an ICMP error or ENOBUFS is not fatal.
			send.send(fd)
			return nil
		}, func() float64 { return float64(received.Load()) })
		return err
	})
	stop.Store(true)
	err := errors.Join(cerr, <-done)
	return Result{Rate: rate, CPU: perOp(ccpu+scpu, received.Load())}, err
}

// mmsghdr is struct mmsghdr, which x/sys/unix does not define.
type mmsghdr struct {
	hdr unix.Msghdr
	len uint32
	_   [4]byte
}

// mmsgs is a batch of datagram buffers for sendmmsg/recvmmsg; a batch of
// one uses plain write/read, the cheapest call for a single datagram.
type mmsgs struct {
	bufs [][]byte
	iovs []unix.Iovec
	hdrs []mmsghdr
}

func newMmsgs(n, size int) *mmsgs {
	m := &mmsgs{bufs: make([][]byte, n), iovs: make([]unix.Iovec, n), hdrs: make([]mmsghdr, n)}
	for i := range n {
		m.bufs[i] = make([]byte, size)
		m.iovs[i].Base = &m.bufs[i][0]
		m.iovs[i].SetLen(size)
		m.hdrs[i].hdr.Iov = &m.iovs[i]
		m.hdrs[i].hdr.SetIovlen(1)
	}
	return m
}

// send sends the batch; errors are ignored (see the caller).
func (m *mmsgs) send(fd int) {
	if len(m.bufs) == 1 {
		_, _ = unix.Write(fd, m.bufs[0])
		return
	}
	_, _, _ = unix.Syscall6(unix.SYS_SENDMMSG, uintptr(fd), uintptr(unsafe.Pointer(&m.hdrs[0])), uintptr(len(m.hdrs)), 0, 0, 0)
}

// recv returns how many datagrams it read, waiting for at least one.
func (m *mmsgs) recv(fd int) int {
	if len(m.bufs) == 1 {
		if n, err := unix.Read(fd, m.bufs[0]); err == nil && n > 0 {
			return 1
		}
		return 0
	}
	n, _, e := unix.Syscall6(unix.SYS_RECVMMSG, uintptr(fd), uintptr(unsafe.Pointer(&m.hdrs[0])), uintptr(len(m.hdrs)), unix.MSG_WAITFORONE, 0, 0)
	if e != 0 {
		return 0
	}
	return int(n)
}
