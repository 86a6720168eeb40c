package probe

import (
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Echo answers probe datagrams on one UDP socket by sending them back.
// Datagrams without the probe header are ignored.
type Echo struct {
	conn     *net.UDPConn
	answered atomic.Int64
	drops    atomic.Uint32
	sendErrs atomic.Int64
	lastErr  atomic.Pointer[string]
	wg       sync.WaitGroup
}

// StartEcho listens on addr in the namespace at nsPath and answers probes
// until Close.
func StartEcho(nsPath string, addr netip.AddrPort) (*Echo, error) {
	c, err := ListenUDP(nsPath, addr)
	if err != nil {
		return nil, err
	}
	return ServeEcho(c), nil
}

// ServeEcho answers probes arriving on conn until Close; it owns conn.
func ServeEcho(conn *net.UDPConn) *Echo {
	e := &Echo{conn: conn}
	e.wg.Add(1)
	go e.loop()
	return e
}

// Addr is the address the responder listens on.
func (e *Echo) Addr() netip.AddrPort { return e.conn.LocalAddr().(*net.UDPAddr).AddrPort() }

// Answered counts the probes sent back.
func (e *Echo) Answered() int64 { return e.answered.Load() }

// Drops counts probes the responder's socket dropped because its receive
// buffer was full (the tool's own loss, not the network's).
func (e *Echo) Drops() uint32 { return e.drops.Load() }

// SendErrors counts the answers whose send failed, and says why the last
// one did: the tool's own loss, like Drops.
func (e *Echo) SendErrors() (n int64, last string) {
	if p := e.lastErr.Load(); p != nil {
		last = *p
	}
	return e.sendErrs.Load(), last
}

// Close stops the responder and closes its socket.
func (e *Echo) Close() error {
	err := e.conn.Close()
	e.wg.Wait()
	return err
}

func (e *Echo) loop() {
	defer e.wg.Done()
	buf := make([]byte, 65536)
	oob := make([]byte, oobSize)
	rc, err := e.conn.SyscallConn()
	if err != nil {
		e.fail(err)
		return
	}
	for {
		n, oobn, _, from, err := e.conn.ReadMsgUDPAddrPort(buf, oob)
		if d, ok := overflow(oob[:oobn]); ok {
			e.drops.Store(d)
		}
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		if _, ok := parseHeader(buf[:n]); !ok {
			continue
		}
		// One non-blocking attempt, as the stream sends, and no write
		// deadline: a deadline's timer runs while the goroutine waits for
		// a CPU, so on a loaded machine it could expire before the write
		// began, and the write then fails without being tried.
		to := &unix.SockaddrInet4{Port: int(from.Port()), Addr: from.Addr().Unmap().As4()}
		var serr error
		if err := rc.Write(func(fd uintptr) bool {
			serr = unix.Sendto(int(fd), buf[:n], unix.MSG_DONTWAIT, to)
			return true
		}); err != nil {
			serr = err
		}
		if serr != nil {
			e.fail(serr)
			continue
		}
		e.answered.Add(1)
	}
}

func (e *Echo) fail(err error) {
	msg := err.Error()
	e.lastErr.Store(&msg)
	e.sendErrs.Add(1)
}
