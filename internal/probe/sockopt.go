package probe

import (
	"encoding/binary"
	"net"

	"golang.org/x/sys/unix"
)

// SocketBuffer is the receive buffer of every probe socket: 4 MiB holds
// several seconds of probes, so a receiver starved of CPU on a busy
// machine does not turn scheduling delays into lost probes.
const SocketBuffer = 4 << 20

// tune enlarges c's buffers and asks the kernel to count datagrams dropped
// because the receive buffer was full (SO_RXQ_OVFL), so the tool can tell
// its own drops from the network's.
func tune(c *net.UDPConn) {
	rc, err := c.SyscallConn()
	if err != nil {
		return
	}
	_ = rc.Control(func(fd uintptr) {
		if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, SocketBuffer) != nil {
			_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, SocketBuffer)
		}
		_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUF, 1<<20)
		_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RXQ_OVFL, 1)
	})
}

// oobSize fits the SO_RXQ_OVFL control message.
var oobSize = unix.CmsgSpace(4)

// overflow reads the socket's cumulative drop counter from a received
// control message; ok is false when there is none.
func overflow(oob []byte) (drops uint32, ok bool) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return 0, false
	}
	for _, m := range msgs {
		if m.Header.Level == unix.SOL_SOCKET && m.Header.Type == unix.SO_RXQ_OVFL && len(m.Data) >= 4 {
			return binary.NativeEndian.Uint32(m.Data), true
		}
	}
	return 0, false
}
