package nsutil

import (
	"fmt"
	"runtime"

	"github.com/vishvananda/netns"
)

// RunIn runs fn in the network namespace at path, or in the caller's if
// path is empty, always on a locked OS thread: TCX attach, netlink and
// socket creation resolve against the calling thread's namespace.
func RunIn(path string, fn func() error) error {
	if path == "" {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		return fn()
	}
	ns, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("open network namespace %s: %w", path, err)
	}
	defer ns.Close()
	errc := make(chan error, 1)
	go func() {
		// Never unlocked: Go ends the thread with the goroutine instead of
		// handing a thread in a foreign namespace to other goroutines.
		runtime.LockOSThread()
		if err := netns.Set(ns); err != nil {
			errc <- fmt.Errorf("enter network namespace %s: %w", path, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}
