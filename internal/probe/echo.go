package probe

import (
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// Echo answers probe datagrams on one UDP socket by sending them back.
// Datagrams without the probe header are ignored.
type Echo struct {
	conn     *net.UDPConn
	answered atomic.Int64
	drops    atomic.Uint32
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
		_ = e.conn.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
		if _, err := e.conn.WriteToUDPAddrPort(buf[:n], from); err == nil {
			e.answered.Add(1)
		}
	}
}
