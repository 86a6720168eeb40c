package controller

import (
	"context"
	"strings"

	"github.com/go-logr/logr"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	"sigs.k8s.io/controller-runtime/pkg/event"

	"github.com/routemode/routemode/agent/datapath"
)

// WatchLinks subscribes to link changes in the namespace ns (netns.None()
// for the caller's) and sends an event on out when a device the agent cares
// about is added, changed or removed: its own devices, pod devices and the
// underlay. It returns when ctx ends.
func WatchLinks(ctx context.Context, ns netns.NsHandle, underlay string, out chan<- event.GenericEvent, log logr.Logger) error {
	updates := make(chan netlink.LinkUpdate, 64)
	done := make(chan struct{})
	opts := netlink.LinkSubscribeOptions{
		ErrorCallback: func(err error) { log.Error(err, "Failed to read link updates") },
	}
	if ns.IsOpen() {
		opts.Namespace = &ns
	}
	if err := netlink.LinkSubscribeWithOptions(updates, done, opts); err != nil {
		return err
	}
	go func() {
		<-ctx.Done()
		close(done)
	}()
	for {
		select {
		case <-ctx.Done():
			return nil
		case u, ok := <-updates:
			if !ok {
				return nil
			}
			name := u.Attrs().Name
			if !Interesting(name, underlay) {
				continue
			}
			// Deletions and admin state changes matter; carrier flaps of
			// pod devices do not generate work beyond a cheap reconcile.
			if u.Header.Type == unix.RTM_DELLINK || u.Header.Type == unix.RTM_NEWLINK {
				wake(out)
			}
		}
	}
}

// Interesting reports whether a device name concerns the agent.
func Interesting(name, underlay string) bool {
	switch name {
	case datapath.TunnelDevice, datapath.HostDevice, datapath.NetDevice, underlay:
		return true
	}
	return strings.HasPrefix(name, "lxc")
}
