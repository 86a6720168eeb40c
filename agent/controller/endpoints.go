package controller

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/fsnotify/fsnotify"
	"github.com/go-logr/logr"
	"sigs.k8s.io/controller-runtime/pkg/event"
)

// WatchEndpoints sends an event on out whenever the CNI plugin adds or
// removes an endpoint record in dir. The plugin writes a pod's record after
// creating its lxc device, so the link event alone can reconcile before the
// record exists; without this watch the pod would wait for the periodic
// resync to enter the eBPF endpoint map. It returns when ctx ends.
func WatchEndpoints(ctx context.Context, dir string, out chan<- event.GenericEvent, log logr.Logger) error {
	dir = filepath.Clean(dir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return err
	}
	defer w.Close()
	if err := w.Add(dir); err != nil {
		return fmt.Errorf("watching %s: %w", dir, err)
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case err, ok := <-w.Errors:
			if !ok {
				return nil
			}
			// Events may have been lost (a queue overflow): look again.
			log.Error(err, "Failed to read endpoint record events", "dir", dir)
			wake(out)
		case e, ok := <-w.Events:
			if !ok {
				return nil
			}
			if e.Name == dir && (e.Has(fsnotify.Remove) || e.Has(fsnotify.Rename)) {
				wake(out)
				return fmt.Errorf("endpoint directory %s was removed", dir)
			}
			// Records are written to a dot-file and renamed into place.
			name := filepath.Base(e.Name)
			if strings.HasPrefix(name, ".") || !strings.HasSuffix(name, ".json") ||
				!e.Has(fsnotify.Create) && !e.Has(fsnotify.Remove) && !e.Has(fsnotify.Rename) {
				continue
			}
			wake(out)
		}
	}
}

// wake queues a reconcile unless one is queued already.
func wake(out chan<- event.GenericEvent) {
	select {
	case out <- event.GenericEvent{}:
	default:
	}
}
