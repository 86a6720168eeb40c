package controller

import (
	"context"
	"os/exec"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/vishvananda/netns"
	"sigs.k8s.io/controller-runtime/pkg/event"

	"github.com/routemode/routemode/agent/nsutil"
	"github.com/routemode/routemode/internal/privileged"
)

// A pod's route deleted in the node's namespace wakes the reconciler;
// other routes' changes, a pod route added and a pod's device deleted do
// not.
func TestWatchRoutes(t *testing.T) {
	privileged.Require(t, "creates a network namespace")
	name, n, err := nsutil.CreateTemp("rmroutes")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := nsutil.Delete(name); err != nil {
			t.Error(err)
		}
	})
	defer n.Close()
	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", append([]string{"-n", name}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
	ip("link", "add", "lxc0", "type", "veth", "peer", "name", "lxc0p")
	ip("link", "set", "lxc0", "up")

	out := make(chan event.GenericEvent, 1)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- WatchRoutes(ctx, netns.NsHandle(n.Fd()), out, logr.Discard()) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("watch ended with %v", err)
		}
	}()
	podRoute := []string{"10.0.0.9/32", "dev", "lxc0", "scope", "link", "proto", "182"}
	// The watch subscribes asynchronously: delete the route until it is seen.
	for deadline := time.Now().Add(30 * time.Second); ; {
		ip(append([]string{"route", "replace"}, podRoute...)...)
		ip("route", "del", "10.0.0.9/32")
		select {
		case <-out:
		case <-time.After(50 * time.Millisecond):
			if time.Now().After(deadline) {
				t.Fatal("no event for a deleted pod route within 30s")
			}
			continue
		}
		break
	}
	expect := func(what string, want bool) { t.Helper(); expectWake(t, out, what, want) }
	ip(append([]string{"route", "add"}, podRoute...)...)
	expect("a pod route added", false)
	ip("route", "add", "10.0.1.0/24", "dev", "lxc0", "proto", "181")
	ip("route", "del", "10.0.1.0/24")
	expect("a peer route deleted (the agent deletes its own)", false)
	ip("route", "add", "10.9.0.0/24", "dev", "lxc0", "proto", "static")
	ip("route", "del", "10.9.0.0/24")
	expect("someone else's route deleted", false)
	ip("route", "del", "10.0.0.9/32")
	expect("a pod route deleted", true)
	// A pod going away (its device deleted, as CNI DEL does) costs no
	// reconcile here: the kernel drops the route without a notification.
	ip(append([]string{"route", "add"}, podRoute...)...)
	expect("a pod route added", false)
	ip("link", "del", "lxc0")
	expect("a pod's device deleted", false)
}
