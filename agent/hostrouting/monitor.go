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
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/go-logr/logr"
	"golang.org/x/sys/unix"

	"github.com/routemode/routemode/bpf"
)

// A monitor owns a node's event stream by holding an exclusive flock on
// the node's pin directory for as long as it runs. A BPF ring buffer has
// one consumer position, so two readers would each see part of the
// events: the lock makes the second one fail clearly instead. The kernel
// drops the lock when the process dies however it dies, which is how the
// agent tells a monitor that crashed with the events still on
// (clearStaleMonitor) from one that is running.

// ErrMonitorBusy is returned by OpenMonitor while another monitor reads the
// node's events.
var ErrMonitorBusy = errors.New("another monitor is reading this node's events")

// lockWait is how long OpenMonitor retries the lock: the agent's own check
// (clearStaleMonitor) may hold it for a moment on a resync.
const lockWait = 2 * time.Second

// Monitor reads the events of the host-routing programs pinned in a node's
// pin directory. While it is open the programs emit them.
type Monitor struct {
	pinDir             string
	dir                *os.File
	events, flag, lost *ebpf.Map
	rd                 *ringbuf.Reader
	lostBase           uint64
}

// OpenMonitor turns the events of the programs pinned in pinDir on and
// attaches a reader to them. Close turns them off.
//
// In legacy host routing the maps may not exist yet, and no program
// reports anything: the lock this takes is what tells the agent to load
// the maps and attach the observe-only programs, on its next resync.
// OpenMonitor calls waiting, if not nil, and waits for the maps until ctx
// ends.
func OpenMonitor(ctx context.Context, pinDir string, waiting func()) (_ *Monitor, err error) {
	m := &Monitor{pinDir: pinDir}
	_, statErr := os.Stat(pinDir)
	defer func() {
		if err != nil {
			m.close()
			// Leave no empty directory behind for a node that is not this
			// one (a wrong --node); os.Remove refuses a directory in use.
			if errors.Is(statErr, os.ErrNotExist) {
				_ = os.Remove(pinDir)
			}
		}
	}()
	if err := EnsureBPFFS(pinDir); err != nil {
		return nil, err
	}
	if m.dir, err = os.Open(pinDir); err != nil {
		return nil, fmt.Errorf("open pin directory: %w", err)
	}
	if err := lockExclusive(m.dir, lockWait); err != nil {
		return nil, err
	}
	if err := waitForMaps(ctx, pinDir, waiting); err != nil {
		return nil, err
	}
	open := func(name string) (*ebpf.Map, error) {
		mp, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, name), nil)
		if err != nil {
			return nil, fmt.Errorf("open %s in %s: %w", name, pinDir, err)
		}
		return mp, nil
	}
	if m.events, err = open(bpf.MapEvents); err != nil {
		return nil, err
	}
	if m.flag, err = open(bpf.MapMonitor); err != nil {
		return nil, err
	}
	if m.lost, err = open(bpf.MapMonitorLost); err != nil {
		return nil, err
	}
	if m.rd, err = ringbuf.NewReader(m.events); err != nil {
		return nil, fmt.Errorf("read %s: %w", bpf.MapEvents, err)
	}
	// Losses before this reader (an earlier monitor's) are not its own.
	if m.lostBase, err = sumLost(m.lost); err != nil {
		return nil, err
	}
	if err := m.flag.Put(uint32(0), uint32(1)); err != nil {
		return nil, fmt.Errorf("turn monitor events on: %w", err)
	}
	return m, nil
}

// waitForMaps returns once the monitor's maps are pinned in pinDir.
func waitForMaps(ctx context.Context, pinDir string, waiting func()) error {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for told := false; ; {
		missing := ""
		for _, name := range []string{bpf.MapEvents, bpf.MapMonitor, bpf.MapMonitorLost} {
			if _, err := os.Stat(filepath.Join(pinDir, name)); err != nil {
				missing = name
				break
			}
		}
		if missing == "" {
			return nil
		}
		if !told && waiting != nil {
			waiting()
			told = true
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s in %s: %w", missing, pinDir, context.Cause(ctx))
		case <-tick.C:
		}
	}
}

func lockExclusive(dir *os.File, wait time.Duration) error {
	deadline := time.Now().Add(wait)
	for {
		err := unix.Flock(int(dir.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			return fmt.Errorf("lock %s: %w", dir.Name(), err)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w (%s is locked)", ErrMonitorBusy, dir.Name())
		}
		time.Sleep(50 * time.Millisecond) // flock has no timed wait
	}
}

// Read returns the next event, waiting for one until deadline (zero: no
// deadline). It returns an error wrapping os.ErrDeadlineExceeded when none
// came, and ringbuf.ErrClosed once Close was called.
func (m *Monitor) Read(deadline time.Time) (bpf.Event, error) {
	m.rd.SetDeadline(deadline)
	rec, err := m.rd.Read()
	if err != nil {
		return bpf.Event{}, err
	}
	return bpf.ParseEvent(rec.RawSample)
}

// Lost returns how many events the programs could not write since
// OpenMonitor because the ring buffer was full.
func (m *Monitor) Lost() (uint64, error) {
	n, err := sumLost(m.lost)
	if err != nil {
		return 0, err
	}
	return n - m.lostBase, nil
}

func sumLost(mp *ebpf.Map) (uint64, error) {
	var per []uint64
	if err := mp.Lookup(uint32(0), &per); err != nil {
		return 0, fmt.Errorf("read %s: %w", bpf.MapMonitorLost, err)
	}
	var n uint64
	for _, v := range per {
		n += v
	}
	return n, nil
}

// Close turns the events off and, in legacy host routing, removes the
// observe-only programs (the agent does too, on its next resync, should
// the monitor be killed), then releases the reader and the lock.
func (m *Monitor) Close() error {
	var errs []error
	if err := m.flag.Put(uint32(0), uint32(0)); err != nil {
		errs = append(errs, fmt.Errorf("turn monitor events off: %w", err))
	}
	errs = append(errs, detachObserve(&journal{log: logr.Discard()}, m.pinDir))
	m.close()
	return errors.Join(errs...)
}

func (m *Monitor) close() {
	if m.rd != nil {
		m.rd.Close()
	}
	for _, mp := range []*ebpf.Map{m.events, m.flag, m.lost} {
		if mp != nil {
			mp.Close()
		}
	}
	if m.dir != nil {
		m.dir.Close() // releases the flock
	}
}

// lockIfIdle takes pinDir's lock if no monitor holds it; release gives
// it back. held reports a running monitor (and release is nil).
func lockIfIdle(pinDir string) (release func(), held bool, err error) {
	d, err := os.Open(pinDir)
	if err != nil {
		return nil, false, err
	}
	err = unix.Flock(int(d.Fd()), unix.LOCK_EX|unix.LOCK_NB)
	if err != nil {
		d.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, true, nil
		}
		return nil, false, fmt.Errorf("lock %s: %w", pinDir, err)
	}
	return func() { d.Close() }, false, nil
}

// clearStaleMonitor turns the events off when no monitor runs: one that
// was killed before its Close left them on, and the programs would keep
// paying for events nobody reads. The lock is held while clearing so that
// a monitor starting meanwhile turns them on after, not before.
func clearStaleMonitor(j *journal, pinDir string, flag *ebpf.Map) error {
	var on uint32
	if err := flag.Lookup(uint32(0), &on); err != nil {
		return fmt.Errorf("read %s: %w", bpf.MapMonitor, err)
	}
	if on == 0 {
		return nil
	}
	release, held, err := lockIfIdle(pinDir)
	if err != nil || held {
		return err
	}
	defer release()
	if err := flag.Put(uint32(0), uint32(0)); err != nil {
		return fmt.Errorf("turn monitor events off: %w", err)
	}
	j.add("monitor events: turned off (the monitor that turned them on is gone)")
	return nil
}

// MonitorState is what the agent's metrics say about a node's monitor:
// whether the events are on, and how many the full ring buffer refused
// since the maps were created.
func MonitorState(pinDir string) (active bool, lost uint64, err error) {
	open := func(name string) (*ebpf.Map, error) {
		return ebpf.LoadPinnedMap(filepath.Join(pinDir, name), &ebpf.LoadPinOptions{ReadOnly: true})
	}
	flag, err := open(bpf.MapMonitor)
	if err != nil {
		return false, 0, fmt.Errorf("open %s in %s: %w", bpf.MapMonitor, pinDir, err)
	}
	defer flag.Close()
	lm, err := open(bpf.MapMonitorLost)
	if err != nil {
		return false, 0, fmt.Errorf("open %s in %s: %w", bpf.MapMonitorLost, pinDir, err)
	}
	defer lm.Close()
	var on uint32
	if err := flag.Lookup(uint32(0), &on); err != nil {
		return false, 0, fmt.Errorf("read %s: %w", bpf.MapMonitor, err)
	}
	lost, err = sumLost(lm)
	return on != 0, lost, err
}
