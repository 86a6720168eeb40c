//go:build linux

package bench

import (
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/routemode/routemode/agent/hostrouting/internal/hrlab"
)

func rawRead(fd int, b []byte) (int, error) {
	n, _, e := unix.RawSyscall(unix.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
	if e != 0 {
		return int(n), e
	}
	return int(n), nil
}
func rawWrite(fd int, b []byte) (int, error) {
	n, _, e := unix.RawSyscall(unix.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
	if e != 0 {
		return int(n), e
	}
	return int(n), nil
}

func TestDbgRaw(t *testing.T) {
	lab := hrlab.New(t, hrlab.Options{PodsPerNode: 1, Prefix: "rmdbg"})
	n1, n2 := lab.Nodes[0], lab.Nodes[1]
	for i, raw := range []bool{false, true, false, true} {
		for _, rt := range []bool{false, true} {
			c := Peer{NSPath: n1.NSPath, IP: n1.UnderlayIP, CPU: 0, RealTime: rt}
			s := Peer{NSPath: n2.NSPath, IP: n2.UnderlayIP, CPU: 1, RealTime: rt}
			rd, wr := unix.Read, unix.Write
			if raw {
				rd, wr = rawRead, rawWrite
			}
			port := 34000 + i*2
			if rt {
				port++
			}
			done, err := server(s, port, new(time.Duration), func(fd int) error {
				buf := make([]byte, 1)
				for {
					n, err := rd(fd, buf)
					if n <= 0 || err != nil {
						return nil
					}
					wr(fd, buf[:n])
				}
			})
			if err != nil {
				t.Fatal(err)
			}
			err = <-onThread(c, func() error {
				fd, err := dialTCP(s.IP, port)
				if err != nil {
					return err
				}
				defer unix.Close(fd)
				c0 := threadCPU()
				w0 := time.Now()
				buf := []byte{1}
				n := 0
				for time.Since(w0) < 300*time.Millisecond {
					wr(fd, buf)
					rd(fd, buf)
					n++
				}
				t.Logf("raw=%v rt=%v rate=%.0f cpu/trans=%v", raw, rt, float64(n)/time.Since(w0).Seconds(), (threadCPU()-c0)/time.Duration(n))
				return nil
			})
			<-done
		}
	}
}
