// Package nlsafe wraps the netlink dump calls the agent uses so that a dump
// interrupted by a concurrent change (NLM_F_DUMP_INTR, surfaced by
// vishvananda/netlink as ErrDumpInterrupted together with partial results)
// is retried instead of being acted on. The policy is Cilium's safenetlink:
// up to 30 attempts, 1 ms apart; the partial data is never returned.
//
// Non-dump calls (RouteReplace, NeighSet, LinkAdd, ...) are used straight
// from the embedded *netlink.Handle.
package nlsafe

import (
	"errors"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

const (
	// Attempts is how often a dump is tried before its interruption is
	// returned as an error.
	Attempts = 30
	// Backoff is the pause between two attempts.
	Backoff = time.Millisecond
)

// Handle is a *netlink.Handle bound to one network namespace whose dump
// calls retry on ErrDumpInterrupted.
type Handle struct {
	*netlink.Handle
}

// Wrap returns h with retrying dumps.
func Wrap(h *netlink.Handle) Handle { return Handle{Handle: h} }

// NewHandleAt opens a handle in the namespace ns.
func NewHandleAt(ns netns.NsHandle) (Handle, error) {
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return Handle{}, err
	}
	return Handle{Handle: h}, nil
}

// NewHandleAtPath opens a handle in the namespace bind-mounted at path
// (/var/run/netns/<name>). The handle keeps the namespace alive.
func NewHandleAtPath(path string) (Handle, error) {
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return Handle{}, err
	}
	defer ns.Close()
	return NewHandleAt(ns)
}

// Retry runs dump until it returns something other than
// ErrDumpInterrupted, at most Attempts times.
func Retry[T any](dump func() (T, error)) (T, error) {
	var (
		v   T
		err error
	)
	for i := range Attempts {
		v, err = dump()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return v, err
		}
		if i < Attempts-1 {
			time.Sleep(Backoff)
		}
	}
	var zero T
	return zero, err
}

// LinkList lists the namespace's links.
func (h Handle) LinkList() ([]netlink.Link, error) {
	return Retry(h.Handle.LinkList)
}

// LinkByName looks a link up by name (the lookup may fall back to a dump).
func (h Handle) LinkByName(name string) (netlink.Link, error) {
	return Retry(func() (netlink.Link, error) { return h.Handle.LinkByName(name) })
}

// LinkByIndex looks a link up by index.
func (h Handle) LinkByIndex(index int) (netlink.Link, error) {
	return Retry(func() (netlink.Link, error) { return h.Handle.LinkByIndex(index) })
}

// AddrList lists the addresses of link (nil: all links) of family.
func (h Handle) AddrList(link netlink.Link, family int) ([]netlink.Addr, error) {
	return Retry(func() ([]netlink.Addr, error) { return h.Handle.AddrList(link, family) })
}

// RouteList lists the routes of link (nil: all links) of family.
func (h Handle) RouteList(link netlink.Link, family int) ([]netlink.Route, error) {
	return Retry(func() ([]netlink.Route, error) { return h.Handle.RouteList(link, family) })
}

// RouteListFiltered lists the routes matching filter under mask.
func (h Handle) RouteListFiltered(family int, filter *netlink.Route, mask uint64) ([]netlink.Route, error) {
	return Retry(func() ([]netlink.Route, error) { return h.Handle.RouteListFiltered(family, filter, mask) })
}

// NeighList lists the neighbour (family AF_INET) or FDB (AF_BRIDGE)
// entries of the link with index linkIndex.
func (h Handle) NeighList(linkIndex, family int) ([]netlink.Neigh, error) {
	return Retry(func() ([]netlink.Neigh, error) { return h.Handle.NeighList(linkIndex, family) })
}

// FilterList lists the tc filters of link under parent.
func (h Handle) FilterList(link netlink.Link, parent uint32) ([]netlink.Filter, error) {
	return Retry(func() ([]netlink.Filter, error) { return h.Handle.FilterList(link, parent) })
}

// IsNotFound reports whether err says the object is already gone: ENOENT,
// ESRCH, ENODEV or a LinkNotFoundError. Deleting something that is gone is
// success for the agent.
func IsNotFound(err error) bool {
	if err == nil {
		return false
	}
	var lnf netlink.LinkNotFoundError
	if errors.As(err, &lnf) {
		return true
	}
	return errors.Is(err, errNoEnt) || errors.Is(err, errSrch) || errors.Is(err, errNoDev)
}
