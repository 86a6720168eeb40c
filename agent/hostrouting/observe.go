//go:build linux

/*
Copyright 2026 The routemode Authors.

Licensed under the Apache License, Version 2.0.
*/

package hostrouting

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/routemode/routemode/agent/nsutil"
	"github.com/routemode/routemode/bpf"
)

// observeSubdir holds the links of the observe-only programs, apart from
// links/ so that nothing mistakes them for eBPF host routing (InForce) and
// a monitor or the agent can remove them all at once.
const observeSubdir = "observe"

func observeDir(pinDir string) string { return filepath.Join(pinDir, observeSubdir) }

// applyObserve makes legacy host routing observable: while a monitor holds
// the node's lock, the observe-only programs are attached at the hooks the
// host-routing programs use; otherwise none is (a monitor that was killed
// left them, or the node just switched to legacy).
func (m *Manager) applyObserve(ctx context.Context, j *journal, cfg Config, eps []Endpoint) error {
	release, idle, err := m.monitorIdle(cfg.PinDir)
	if err != nil || idle {
		if err == nil {
			defer release()
		}
		return errors.Join(err, detachObserve(j, cfg.PinDir))
	}
	caps := m.probe()
	if !caps.BPFHostRouting || !caps.TCX {
		return fmt.Errorf("a monitor waits for observe-only programs, which need TCX: %s", caps.Reason)
	}
	if err := os.MkdirAll(observeDir(cfg.PinDir), 0o700); err != nil {
		return err
	}
	underlay, tunnel, links, err := resolveDevices(m.opts.Handle, cfg)
	if err != nil {
		return err
	}
	entries, lxcs, _ := endpointEntries(eps, links)
	// The configuration only matters to the forwarding programs, which are
	// not attached: the maps are what the monitor needs.
	coll, fresh, err := m.programs(j, cfg.PinDir, m.loaded)
	if err != nil {
		return err
	}
	if fresh {
		m.dropCollection()
		m.coll, m.pinDir = coll, cfg.PinDir
	}
	// The events name endpoints from this map.
	if err := syncMap(j, coll.Maps[bpf.MapEndpoints], entries, endpointKey); err != nil {
		return err
	}
	want := map[string]bool{}
	err = nsutil.RunIn(m.opts.NetNS, func() error {
		for _, a := range plan(underlay, tunnel, lxcs) {
			if err := ctx.Err(); err != nil {
				return err
			}
			name := observeProg(a.Role)
			pin := a.pinName()
			c, err := upsertTCX(filepath.Join(observeDir(cfg.PinDir), pin), a.Ifindex, coll.Programs[name])
			if err != nil {
				return fmt.Errorf("%s: %w", a.Dev, err)
			}
			want[pin] = true
			if c != unchanged {
				j.add("tcx ingress %s: %s %s", a.Dev, c, name)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	return detachObservePins(j, cfg.PinDir, func(pin string) bool { return !want[pin] })
}

func observeProg(r role) string {
	return map[role]string{roleNetdev: bpf.ProgObserveNetdev, roleOverlay: bpf.ProgObserveOverlay, roleLXC: bpf.ProgObserveLXC}[r]
}

// monitorIdle reports whether no monitor runs on the node, holding the
// lock while idle so that none starts until release; a node without a pin
// directory has none.
func (m *Manager) monitorIdle(pinDir string) (release func(), idle bool, err error) {
	release, held, err := lockIfIdle(pinDir)
	if errors.Is(err, os.ErrNotExist) {
		return func() {}, true, nil
	}
	if err != nil {
		return nil, false, err
	}
	return release, !held, nil
}

// detachObserve removes every observe-only program of the node.
func detachObserve(j *journal, pinDir string) error {
	return detachObservePins(j, pinDir, func(string) bool { return true })
}

func detachObservePins(j *journal, pinDir string, drop func(pin string) bool) error {
	pins, err := pinned(observeDir(pinDir))
	if err != nil {
		return err
	}
	var errs []error
	for _, p := range pins {
		if drop(p) {
			j.detached(&errs, detachTCX(filepath.Join(observeDir(pinDir), p)), true, p)
		}
	}
	return errors.Join(errs...)
}
