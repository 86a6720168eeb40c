// Package nsutil creates, opens and deletes named network namespaces (the
// /var/run/netns/<name> bind mounts that `ip netns` uses) and reads and
// writes per-namespace sysctls. Namespace switches happen on a locked OS
// thread that is thrown away afterwards, so no goroutine of the caller ever
// runs in a namespace it did not expect.
package nsutil

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// RunDir is where named namespaces are bind-mounted, as for `ip netns`.
const RunDir = "/var/run/netns"

// NamedPath is the path of the named namespace name.
func NamedPath(name string) string { return filepath.Join(RunDir, name) }

// Exists reports whether the named namespace exists.
func Exists(name string) bool {
	return ns.IsNSorErr(NamedPath(name)) == nil
}

// Ensure opens the named namespace, creating it first if it does not exist.
// created says whether it was created.
func Ensure(name string) (n ns.NetNS, created bool, err error) {
	if Exists(name) {
		n, err = ns.GetNS(NamedPath(name))
		return n, false, err
	}
	n, err = Create(name)
	return n, err == nil, err
}

// CreateTemp makes a new named network namespace, named prefix and six
// random hex digits, for throwaway uses (tests); the caller deletes it.
func CreateTemp(prefix string) (name string, n ns.NetNS, err error) {
	b := make([]byte, 3)
	if _, err := rand.Read(b); err != nil {
		return "", nil, err
	}
	name = prefix + hex.EncodeToString(b)
	n, err = Create(name)
	return name, n, err
}

// Create makes a new named network namespace, without switching the caller
// into it, and brings its loopback device up.
func Create(name string) (ns.NetNS, error) {
	if name == "" || strings.ContainsRune(name, '/') {
		return nil, fmt.Errorf("invalid namespace name %q", name)
	}
	if err := ensureRunDir(); err != nil {
		return nil, err
	}
	path := NamedPath(name)
	// A mount point left behind without its namespace (the bind mount died
	// with a container whose mounts did not reach the host) is not a
	// namespace any more: replace it.
	var notNS ns.NSPathNotNSErr
	if err := ns.IsNSorErr(path); errors.As(err, &notNS) {
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("removing the stale mount point of namespace %s: %w", name, err)
		}
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_RDONLY, 0o444)
	if err != nil {
		return nil, fmt.Errorf("creating mount point for namespace %s: %w", name, err)
	}
	f.Close()

	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		// Never unlocked: the runtime discards this thread when the
		// goroutine ends, whatever namespace it is left in.
		runtime.LockOSThread()
		if err = unix.Unshare(unix.CLONE_NEWNET); err != nil {
			err = fmt.Errorf("unshare: %w", err)
			return
		}
		self := fmt.Sprintf("/proc/%d/task/%d/ns/net", os.Getpid(), unix.Gettid())
		if err = unix.Mount(self, path, "none", unix.MS_BIND, ""); err != nil {
			err = fmt.Errorf("bind-mounting namespace %s: %w", name, err)
			return
		}
		// A fresh namespace's loopback is down; sockets bound to its
		// addresses are common (probes), so bring it up here.
		err = setLoopbackUp()
	}()
	wg.Wait()
	if err != nil {
		_ = unix.Unmount(path, unix.MNT_DETACH)
		_ = os.Remove(path)
		return nil, err
	}
	return ns.GetNS(path)
}

// Delete removes the named namespace; a namespace that does not exist is
// not an error. The namespace itself lives on while something still holds
// it open.
func Delete(name string) error {
	path := NamedPath(name)
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmounting namespace %s: %w", name, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing namespace %s: %w", name, err)
	}
	return nil
}

// ensureRunDir makes RunDir a shared mount point, as `ip netns add` does,
// so namespaces mounted later also show in other mount namespaces.
func ensureRunDir() error {
	if err := os.MkdirAll(RunDir, 0o755); err != nil {
		return err
	}
	err := unix.Mount("", RunDir, "none", unix.MS_SHARED|unix.MS_REC, "")
	if err == nil {
		return nil
	}
	if !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("making %s shared: %w", RunDir, err)
	}
	if err := unix.Mount(RunDir, RunDir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("bind-mounting %s: %w", RunDir, err)
	}
	if err := unix.Mount("", RunDir, "none", unix.MS_SHARED|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("making %s shared: %w", RunDir, err)
	}
	return nil
}

func setLoopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("reading lo flags: %w", err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("setting lo up: %w", err)
	}
	return nil
}

// InScratch runs fn in a new, empty network namespace that disappears
// afterwards: for probing what the kernel can do (create a device, load a
// module) without touching the caller's namespace. fn's thread is never
// unlocked, so Go discards it, and the namespace with it.
func InScratch(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		scratch, err := netns.New()
		if err != nil {
			errc <- fmt.Errorf("creating a scratch network namespace: %w", err)
			return
		}
		defer scratch.Close()
		errc <- fn()
	}()
	return <-errc
}
