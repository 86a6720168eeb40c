package probe

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"
)

// TCPEcho accepts TCP connections and echoes what it reads.
type TCPEcho struct {
	l     *net.TCPListener
	wg    sync.WaitGroup
	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

// StartTCPEcho listens on addr in the namespace at nsPath.
func StartTCPEcho(nsPath string, addr netip.AddrPort) (*TCPEcho, error) {
	l, err := ListenTCP(nsPath, addr)
	if err != nil {
		return nil, err
	}
	e := &TCPEcho{l: l, conns: map[net.Conn]struct{}{}}
	e.wg.Add(1)
	go e.accept()
	return e, nil
}

// Addr is the listening address.
func (e *TCPEcho) Addr() netip.AddrPort { return e.l.Addr().(*net.TCPAddr).AddrPort() }

// Close stops accepting and closes every connection.
func (e *TCPEcho) Close() error {
	err := e.l.Close()
	e.mu.Lock()
	for c := range e.conns {
		c.Close()
	}
	e.mu.Unlock()
	e.wg.Wait()
	return err
}

func (e *TCPEcho) accept() {
	defer e.wg.Done()
	for {
		c, err := e.l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		e.mu.Lock()
		e.conns[c] = struct{}{}
		e.mu.Unlock()
		e.wg.Add(1)
		go func() {
			defer e.wg.Done()
			_, _ = io.Copy(c, c)
			c.Close()
			e.mu.Lock()
			delete(e.conns, c)
			e.mu.Unlock()
		}()
	}
}

// TCPCheckConfig describes a long-lived TCP connection that exchanges a
// numbered message with a TCPEcho every Interval.
type TCPCheckConfig struct {
	NSPath string
	Target netip.AddrPort
	// Interval between messages; 0 means 10 ms.
	Interval time.Duration
	// Timeout for one message's echo; 0 means 2 s.
	Timeout time.Duration
}

// TCPStats counts what happened to the connection.
type TCPStats struct {
	// Messages counts messages echoed back correctly.
	Messages int64
	// Resets counts connections that ended with ECONNRESET or EPIPE.
	Resets int64
	// Errors counts every other failure (timeouts, wrong echo, EOF).
	Errors int64
	// Reconnects counts new connections after the first.
	Reconnects int64
	// LargestGap is the longest time between two echoed messages.
	LargestGap time.Duration
	// LastError is the last failure, if any.
	LastError string
}

func (s TCPStats) String() string {
	return fmt.Sprintf("messages=%d resets=%d errors=%d reconnects=%d largest_gap=%s last_error=%q",
		s.Messages, s.Resets, s.Errors, s.Reconnects, s.LargestGap.Round(10*time.Microsecond), s.LastError)
}

// TCPCheck is a running connection checker.
type TCPCheck struct {
	cfg    TCPCheckConfig
	cancel context.CancelFunc
	done   chan struct{}
	mu     sync.Mutex
	st     TCPStats
}

// StartTCPCheck connects to cfg.Target and starts exchanging messages; the
// first connection must succeed.
func StartTCPCheck(ctx context.Context, cfg TCPCheckConfig) (*TCPCheck, error) {
	if cfg.Interval <= 0 {
		cfg.Interval = 10 * time.Millisecond
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 2 * time.Second
	}
	dctx, dcancel := context.WithTimeout(ctx, cfg.Timeout)
	conn, err := DialTCP(dctx, cfg.NSPath, cfg.Target)
	dcancel()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	c := &TCPCheck{cfg: cfg, cancel: cancel, done: make(chan struct{})}
	go c.run(ctx, conn)
	return c, nil
}

// Stop ends the checker and returns its counts.
func (c *TCPCheck) Stop() TCPStats {
	c.cancel()
	<-c.done
	return c.Snapshot()
}

// Snapshot returns the counts so far.
func (c *TCPCheck) Snapshot() TCPStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.st
}

func (c *TCPCheck) fail(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) {
		c.st.Resets++
	} else {
		c.st.Errors++
	}
	c.st.LastError = err.Error()
}

func (c *TCPCheck) run(ctx context.Context, conn *net.TCPConn) {
	defer close(c.done)
	defer func() {
		if conn != nil {
			conn.Close()
		}
	}()
	last := time.Now()
	var seq uint64
	out, in := make([]byte, 8), make([]byte, 8)
	tick := time.NewTicker(c.cfg.Interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if conn == nil {
			dctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
			nc, err := DialTCP(dctx, c.cfg.NSPath, c.cfg.Target)
			cancel()
			if err != nil {
				if ctx.Err() == nil {
					c.fail(err)
				}
				continue
			}
			conn = nc
			c.mu.Lock()
			c.st.Reconnects++
			c.mu.Unlock()
		}
		seq++
		binary.BigEndian.PutUint64(out, seq)
		_ = conn.SetDeadline(time.Now().Add(c.cfg.Timeout))
		_, err := conn.Write(out)
		if err == nil {
			_, err = io.ReadFull(conn, in)
		}
		if err == nil && binary.BigEndian.Uint64(in) != seq {
			err = fmt.Errorf("echo of message %d carried %d", seq, binary.BigEndian.Uint64(in))
		}
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			c.fail(err)
			conn.Close()
			conn = nil
			continue
		}
		now := time.Now()
		c.mu.Lock()
		c.st.Messages++
		if gap := now.Sub(last); gap > c.st.LargestGap {
			c.st.LargestGap = gap
		}
		c.mu.Unlock()
		last = now
	}
}

// Exchange connects as StartTCPCheck does and keeps exchanging messages
// until n were echoed, the connection failed, or limit passed; it returns
// the counts, and an error only when the first connection failed.
func Exchange(ctx context.Context, cfg TCPCheckConfig, n int64, limit time.Duration) (TCPStats, error) {
	c, err := StartTCPCheck(ctx, cfg)
	if err != nil {
		return TCPStats{}, err
	}
	deadline := time.Now().Add(limit)
	for {
		st := c.Snapshot()
		if st.Messages >= n || st.Resets+st.Errors > 0 || time.Now().After(deadline) {
			return c.Stop(), nil
		}
		time.Sleep(10 * time.Millisecond)
	}
}
