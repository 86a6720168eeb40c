package probe

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// Pinger sends single probes to Echo responders over one socket and matches
// the answers, so many targets can be pinged concurrently. The agent uses it
// from its health endpoint to probe every peer.
type Pinger struct {
	conn *net.UDPConn
	id   uint64
	seq  atomic.Uint64

	mu      sync.Mutex
	pending map[uint64]chan time.Time
	done    chan struct{}
}

// NewPinger opens a socket bound to local in the namespace at nsPath.
func NewPinger(nsPath string, local netip.AddrPort) (*Pinger, error) {
	c, err := ListenUDP(nsPath, local)
	if err != nil {
		return nil, err
	}
	p := &Pinger{conn: c, id: rand.Uint64(), pending: map[uint64]chan time.Time{}, done: make(chan struct{})}
	go p.receive()
	return p, nil
}

// LocalAddr is the address the pinger sends from.
func (p *Pinger) LocalAddr() netip.AddrPort { return p.conn.LocalAddr().(*net.UDPAddr).AddrPort() }

// Close closes the socket; pending pings fail.
func (p *Pinger) Close() error {
	err := p.conn.Close()
	<-p.done
	return err
}

// Ping sends one probe of size bytes (0: 64) to target and waits for its
// answer until timeout; it returns the round trip.
func (p *Pinger) Ping(ctx context.Context, target netip.AddrPort, size int, timeout time.Duration) (time.Duration, error) {
	if size == 0 {
		size = 64
	}
	if size < headerLen {
		size = headerLen
	}
	seq := p.seq.Add(1)
	ch := make(chan time.Time, 1)
	p.mu.Lock()
	p.pending[seq] = ch
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		delete(p.pending, seq)
		p.mu.Unlock()
	}()

	buf := make([]byte, size)
	sent := time.Now()
	header{stream: p.id, seq: seq, sent: sent}.put(buf)
	_ = p.conn.SetWriteDeadline(sent.Add(timeout))
	if _, err := p.conn.WriteToUDPAddrPort(buf, target); err != nil {
		return 0, fmt.Errorf("sending probe to %s: %w", target, err)
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case at := <-ch:
		return at.Sub(sent), nil
	case <-t.C:
		return 0, fmt.Errorf("no answer from %s within %s", target, timeout)
	case <-ctx.Done():
		return 0, ctx.Err()
	case <-p.done:
		return 0, net.ErrClosed
	}
}

func (p *Pinger) receive() {
	defer close(p.done)
	buf := make([]byte, 65536)
	for {
		n, _, err := p.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		now := time.Now()
		h, ok := parseHeader(buf[:n])
		if !ok || h.stream != p.id {
			continue
		}
		p.mu.Lock()
		ch := p.pending[h.seq]
		p.mu.Unlock()
		if ch != nil {
			select {
			case ch <- now:
			default:
			}
		}
	}
}

// PingOnce sends one probe from the namespace at nsPath to target and waits
// for the answer. With dontFragment the datagram carries DF and is refused
// locally if it exceeds the sender's route MTU.
func PingOnce(ctx context.Context, nsPath string, target netip.AddrPort, size int, dontFragment bool, timeout time.Duration) (time.Duration, error) {
	p, err := NewPinger(nsPath, netip.AddrPort{})
	if err != nil {
		return 0, err
	}
	defer p.Close()
	if dontFragment {
		if err := setDontFragment(p.conn); err != nil {
			return 0, err
		}
	}
	return p.Ping(ctx, target, size, timeout)
}

// PingRetry pings target until an answer arrives, up to attempts times.
func (p *Pinger) PingRetry(ctx context.Context, target netip.AddrPort, attempts int, timeout time.Duration) (time.Duration, error) {
	var err error
	for range max(attempts, 1) {
		var rtt time.Duration
		if rtt, err = p.Ping(ctx, target, 0, timeout); err == nil {
			return rtt, nil
		}
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
	}
	return 0, err
}

// Warm pings target from the namespace at nsPath until it answers, at most
// attempts times a second apart, so that a stream started afterwards finds
// the neighbour entries on its path resolved: a stream started cold queues
// its first probes behind ARP, and on a loaded machine an answer slower
// than the neighbour queue is long costs some of them.
func Warm(ctx context.Context, nsPath string, target netip.AddrPort, attempts int) error {
	p, err := NewPinger(nsPath, netip.AddrPort{})
	if err != nil {
		return err
	}
	defer p.Close()
	if _, err := p.PingRetry(ctx, target, attempts, time.Second); err != nil {
		return fmt.Errorf("no answer from %s in %d tries: %w", target, attempts, err)
	}
	return nil
}

// AnswerSource sends probes from the namespace at nsPath to the Echo at
// target until one is answered, at most attempts times, waiting timeout for
// each, and returns the address the answer came from. A datapath that
// rewrites the answer's source (a masquerade conntrack applied to it) shows
// there; a connected socket would only drop the answer.
func AnswerSource(nsPath string, target netip.AddrPort, attempts int, timeout time.Duration) (netip.AddrPort, error) {
	c, err := ListenUDP(nsPath, netip.AddrPort{})
	if err != nil {
		return netip.AddrPort{}, err
	}
	defer c.Close()
	id := rand.Uint64()
	out, in := make([]byte, headerLen), make([]byte, 64)
	for seq := range uint64(max(attempts, 1)) {
		header{stream: id, seq: seq, sent: time.Now()}.put(out)
		if _, err := c.WriteToUDPAddrPort(out, target); err != nil {
			return netip.AddrPort{}, fmt.Errorf("sending probe to %s: %w", target, err)
		}
		_ = c.SetReadDeadline(time.Now().Add(timeout))
		for {
			n, from, err := c.ReadFromUDPAddrPort(in)
			if err != nil {
				break // timed out: send the next probe
			}
			if h, ok := parseHeader(in[:n]); ok && h.stream == id {
				return from, nil
			}
		}
	}
	return netip.AddrPort{}, fmt.Errorf("no answer from %s in %d tries of %s", target, attempts, timeout)
}
