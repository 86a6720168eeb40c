package controller

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"sigs.k8s.io/controller-runtime/pkg/event"

	"github.com/routemode/routemode/agent/endpoint"
)

// The plugin's records, written and removed as the plugin does, wake the
// reconciler; other files in the directory do not.
func TestWatchEndpoints(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "endpoints") // created by the watch
	out := make(chan event.GenericEvent, 1)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- WatchEndpoints(ctx, dir, out, logr.Discard()) }()
	defer cancel()
	store := endpoint.Store{Dir: dir}
	ep := endpoint.Endpoint{ContainerID: "c1", IfName: "eth0", IP: netip.MustParseAddr("10.0.0.9")}
	// The watch starts asynchronously: rewrite the record until it is seen.
	for deadline := time.Now().Add(30 * time.Second); ; {
		if err := store.Put(ep); err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
		select {
		case <-out:
		case <-time.After(50 * time.Millisecond):
			if time.Now().After(deadline) {
				t.Fatal("no event for a new record within 30s")
			}
			continue
		}
		break
	}
	if err := store.Delete("c1", "eth0"); err != nil {
		t.Fatal(err)
	}
	expect := func(what string, want bool) { t.Helper(); expectWake(t, out, what, want) }
	expect("a removed record", true)
	if err := store.Put(ep); err != nil {
		t.Fatal(err)
	}
	expect("a new record", true)
	if err := os.WriteFile(filepath.Join(dir, "notes.txt"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	expect("a file that is not a record", false)
	if err := store.Delete("c1", "eth0"); err != nil {
		t.Fatal(err)
	}
	expect("a removed record", true)

	// Without its directory the watch is over, and says so.
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "removed") {
			t.Errorf("watch ended with %v, want an error saying the directory was removed", err)
		}
	case <-time.After(30 * time.Second):
		t.Error("the watch did not end when its directory was removed")
	}
}

// expectWake fails unless out delivers an event (want) or stays quiet. A
// wanted event may take long on a loaded machine; an unwanted one is given
// half a second to show, which only a quiet machine would miss.
func expectWake(t *testing.T, out <-chan event.GenericEvent, what string, want bool) {
	t.Helper()
	wait := 500 * time.Millisecond
	if want {
		wait = 30 * time.Second
	}
	select {
	case <-out:
		if !want {
			t.Errorf("%s woke the reconciler", what)
		}
	case <-time.After(wait):
		if want {
			t.Errorf("%s did not wake the reconciler within %s", what, wait)
		}
	}
}
