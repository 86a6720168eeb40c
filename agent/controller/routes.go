package controller

import (
	"context"

	"github.com/go-logr/logr"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	"sigs.k8s.io/controller-runtime/pkg/event"

	"github.com/routemode/routemode/agent/podnet"
)

// WatchRoutes subscribes to route changes in the namespace ns (netns.None()
// for the caller's) and sends an event on out when a pod's route (the CNI
// plugin's protocol) is deleted from the main table, so that the agent
// puts it back at once rather than at the next resync: with eBPF host
// routing a pod stays reachable without it, so nothing else would show it
// missing until the switch back to legacy host routing. The agent itself
// never deletes one, and a pod's device going takes its route without a
// notification, so this costs no reconcile in normal operation. A
// subscription the kernel ends (its socket overflowed) is made again, with
// a reconcile for what it may have missed. It returns when ctx ends.
func WatchRoutes(ctx context.Context, ns netns.NsHandle, out chan<- event.GenericEvent, log logr.Logger) error {
	for {
		updates := make(chan netlink.RouteUpdate, 64)
		done := make(chan struct{})
		opts := netlink.RouteSubscribeOptions{
			ErrorCallback: func(err error) { log.Error(err, "Failed to read route updates") },
		}
		if ns.IsOpen() {
			opts.Namespace = &ns
		}
		if err := netlink.RouteSubscribeWithOptions(updates, done, opts); err != nil {
			return err
		}
		if !readRoutes(ctx, updates, out) {
			close(done)
			return nil
		}
		close(done)
		wake(out)
	}
}

// readRoutes wakes the reconciler for every pod route deleted until the
// subscription ends (true) or ctx does (false).
func readRoutes(ctx context.Context, updates <-chan netlink.RouteUpdate, out chan<- event.GenericEvent) bool {
	for {
		select {
		case <-ctx.Done():
			return false
		case u, ok := <-updates:
			if !ok {
				return ctx.Err() == nil
			}
			if u.Type == unix.RTM_DELROUTE && u.Protocol == podnet.RouteProtocol && u.Table == unix.RT_TABLE_MAIN {
				wake(out)
			}
		}
	}
}
