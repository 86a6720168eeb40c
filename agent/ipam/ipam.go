// Package ipam hands out pod addresses from a node's podCIDR. Allocations
// are files on disk, one per address holding "<containerID>\r\n<ifName>",
// the layout of the host-local plugin, guarded by an flock on the
// directory so concurrent CNI ADDs on a node never get the same address.
// The next search starts after the last address handed out (recorded in
// last_reserved_ip.0), so a released address is not reused at once.
//
// Reserved addresses: the network address (.0, also the node's VTEP label in
// tunnel routes), the router IP (.1, the pods' gateway), the health endpoint
// (.2) and the broadcast address. Pods get .3 up to broadcast-1.
package ipam

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Network is the sub-directory of the IPAM directory that holds the
// allocations.
const Network = "routemode"

const (
	lastFile = "last_reserved_ip.0"
	lockFile = "lock"
)

// RouterIP is the pods' gateway: the first address of podCIDR.
func RouterIP(podCIDR netip.Prefix) netip.Addr { return podCIDR.Masked().Addr().Next() }

// HealthIP is the address of the node's health endpoint: the second
// address of podCIDR. Every node derives any peer's from its podCIDR.
func HealthIP(podCIDR netip.Prefix) netip.Addr { return RouterIP(podCIDR).Next() }

// Broadcast is the last address of p.
func Broadcast(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().As4()
	host := uint32(1)<<(32-p.Bits()) - 1
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3]) | host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// Allocator allocates addresses of one podCIDR.
type Allocator struct {
	dir     string
	podCIDR netip.Prefix
	first   netip.Addr
	last    netip.Addr
}

// New opens the allocations under dir for podCIDR.
func New(dir string, podCIDR netip.Prefix) (*Allocator, error) {
	podCIDR = podCIDR.Masked()
	if !podCIDR.Addr().Is4() || podCIDR.Bits() > 29 {
		return nil, fmt.Errorf("podCIDR %s is not an IPv4 network of at least 8 addresses", podCIDR)
	}
	d := filepath.Join(dir, Network)
	if err := os.MkdirAll(d, 0o755); err != nil {
		return nil, fmt.Errorf("creating IPAM directory: %w", err)
	}
	return &Allocator{
		dir:     d,
		podCIDR: podCIDR,
		first:   HealthIP(podCIDR).Next(),
		last:    Broadcast(podCIDR).Prev(),
	}, nil
}

// lock takes the directory's exclusive lock; the returned func releases it.
func (a *Allocator) lock() (func(), error) {
	f, err := os.OpenFile(filepath.Join(a.dir, lockFile), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("locking %s: %w", a.dir, err)
	}
	return func() {
		_ = unix.Flock(int(f.Fd()), unix.LOCK_UN)
		f.Close()
	}, nil
}

func owner(containerID, ifName string) string {
	return strings.TrimSpace(containerID) + "\r\n" + ifName
}

// Allocate returns the address of the attachment, allocating one if it has
// none yet (a repeated ADD gets the same address).
func (a *Allocator) Allocate(containerID, ifName string) (netip.Addr, error) {
	unlock, err := a.lock()
	if err != nil {
		return netip.Addr{}, err
	}
	defer unlock()
	if ip, ok := a.lookupLocked(containerID, ifName); ok {
		return ip, nil
	}
	start := a.first
	if b, err := os.ReadFile(filepath.Join(a.dir, lastFile)); err == nil {
		if ip, err := netip.ParseAddr(strings.TrimSpace(string(b))); err == nil && ip.Compare(a.first) >= 0 && ip.Compare(a.last) < 0 {
			start = ip.Next()
		}
	}
	ip := start
	for {
		f, err := os.OpenFile(filepath.Join(a.dir, ip.String()), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
		if err == nil {
			_, werr := f.WriteString(owner(containerID, ifName))
			cerr := f.Close()
			if err := errors.Join(werr, cerr); err != nil {
				os.Remove(f.Name())
				return netip.Addr{}, err
			}
			if err := os.WriteFile(filepath.Join(a.dir, lastFile), []byte(ip.String()), 0o600); err != nil {
				return netip.Addr{}, err
			}
			return ip, nil
		}
		if !errors.Is(err, os.ErrExist) {
			return netip.Addr{}, err
		}
		if ip = ip.Next(); ip.Compare(a.last) > 0 {
			ip = a.first
		}
		if ip == start {
			return netip.Addr{}, fmt.Errorf("no free address left in %s (%s-%s)", a.podCIDR, a.first, a.last)
		}
	}
}

// Lookup returns the attachment's address in this podCIDR, if any.
func (a *Allocator) Lookup(containerID, ifName string) (netip.Addr, bool) {
	unlock, err := a.lock()
	if err != nil {
		return netip.Addr{}, false
	}
	defer unlock()
	return a.lookupLocked(containerID, ifName)
}

func (a *Allocator) lookupLocked(containerID, ifName string) (netip.Addr, bool) {
	ips, _ := a.findLocked(containerID, ifName)
	for _, ip := range ips {
		if a.podCIDR.Contains(ip) {
			return ip, true
		}
	}
	return netip.Addr{}, false
}

func (a *Allocator) findLocked(containerID, ifName string) ([]netip.Addr, error) {
	all, err := a.allocationsLocked()
	if err != nil {
		return nil, err
	}
	var out []netip.Addr
	for _, al := range all {
		if al.ContainerID == strings.TrimSpace(containerID) && al.IfName == ifName {
			out = append(out, al.IP)
		}
	}
	return out, nil
}

// Allocation is an address handed out and the attachment holding it.
type Allocation struct {
	IP          netip.Addr
	ContainerID string
	IfName      string
}

// Allocations lists the addresses handed out and their attachments.
func (a *Allocator) Allocations() ([]Allocation, error) {
	unlock, err := a.lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	return a.allocationsLocked()
}

func (a *Allocator) allocationsLocked() ([]Allocation, error) {
	entries, err := os.ReadDir(a.dir)
	if err != nil {
		return nil, err
	}
	var out []Allocation
	for _, e := range entries {
		ip, err := netip.ParseAddr(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join(a.dir, e.Name()))
		if err != nil {
			continue
		}
		containerID, ifName, _ := strings.Cut(strings.TrimSpace(string(b)), "\r\n")
		out = append(out, Allocation{IP: ip, ContainerID: containerID, IfName: ifName})
	}
	return out, nil
}

// Capacity is how many pod addresses the podCIDR holds.
func (a *Allocator) Capacity() int {
	return 1<<(32-a.podCIDR.Bits()) - 4 // network, router, health, broadcast
}

// Release frees the attachment's addresses; none is fine.
func (a *Allocator) Release(containerID, ifName string) error {
	unlock, err := a.lock()
	if err != nil {
		return err
	}
	defer unlock()
	ips, err := a.findLocked(containerID, ifName)
	if err != nil {
		return err
	}
	for _, ip := range ips {
		if err := os.Remove(filepath.Join(a.dir, ip.String())); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return nil
}
