//go:build linux

/*
Copyright 2026 The routemode Authors.

Licensed under the Apache License, Version 2.0.
*/

package hostrouting

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/routemode/routemode/agent/nlsafe"
	"github.com/routemode/routemode/bpf"
)

const (
	linksSubdir = "links"
	tcSubdir    = "tc"

	// Classic tc filter slot for the fallback. A fixed priority and handle
	// make FilterReplace an atomic swap of our own filter only.
	tcPriority = 0x7201
	tcHandle   = 1
)

// change says what an upsert did, for the log.
type change string

const (
	unchanged change = ""
	attached  change = "attached"
	updated   change = "updated"
)

// upsertTCX attaches prog at ingress of ifindex through the link pinned at
// pin, swapping the program of an existing link in place.
func upsertTCX(pin string, ifindex int, prog *ebpf.Program) (change, error) {
	l, err := link.LoadPinnedLink(pin, nil)
	switch {
	case err == nil:
		c, done, uerr := updateTCX(l, ifindex, prog)
		if done || uerr != nil {
			l.Close()
			return c, uerr
		}
		// Defunct (its device was deleted) or pinned for another device
		// that took this name: replace it.
		if err := l.Unpin(); err != nil && !errors.Is(err, os.ErrNotExist) {
			l.Close()
			return unchanged, fmt.Errorf("unpin stale link %s: %w", pin, err)
		}
		l.Close()
	case !errors.Is(err, os.ErrNotExist):
		return unchanged, fmt.Errorf("open pinned link %s: %w", pin, err)
	}

	nl, err := link.AttachTCX(link.TCXOptions{
		Interface: ifindex,
		Program:   prog,
		Attach:    ebpf.AttachTCXIngress,
		Anchor:    link.Tail(),
	})
	if err != nil {
		return unchanged, fmt.Errorf("attach tcx ingress of ifindex %d: %w", ifindex, err)
	}
	defer nl.Close()
	if err := nl.Pin(pin); err != nil {
		return unchanged, fmt.Errorf("pin link %s: %w", pin, err)
	}
	return attached, nil
}

// updateTCX swaps prog into l if l is alive on ifindex. done is false when
// l must be replaced instead.
func updateTCX(l link.Link, ifindex int, prog *ebpf.Program) (c change, done bool, err error) {
	info, err := l.Info()
	if err != nil || info.TCX() == nil || int(info.TCX().Ifindex) != ifindex {
		return unchanged, false, nil
	}
	if pinfo, err := prog.Info(); err == nil {
		if id, ok := pinfo.ID(); ok && id == info.Program {
			return unchanged, true, nil
		}
	}
	if sameProgram(info.Program, prog) {
		return unchanged, true, nil
	}
	if err := l.Update(prog); err != nil {
		if errors.Is(err, unix.ENOLINK) {
			return unchanged, false, nil
		}
		return unchanged, false, fmt.Errorf("update tcx link on ifindex %d: %w", ifindex, err)
	}
	return updated, true, nil
}

// sameProgram says whether the program with id does what prog does: the
// same name and instructions (the kernel's tag, which leaves map
// references out), using the same maps, or global-data maps (.rodata's
// load-time constants, .bss) of the same contents. A restarted agent loads
// programs of its own; swapping them in for identical ones would be a
// change the node does not need. When in doubt it says no, and the link
// is updated as before.
func sameProgram(id ebpf.ProgramID, prog *ebpf.Program) bool {
	running, err := ebpf.NewProgramFromID(id)
	if err != nil {
		return false
	}
	defer running.Close()
	ri, err := running.Info()
	if err != nil {
		return false
	}
	pi, err := prog.Info()
	if err != nil || ri.Tag != pi.Tag || ri.Name != pi.Name {
		return false
	}
	rmaps, ok1 := ri.MapIDs()
	pmaps, ok2 := pi.MapIDs()
	if !ok1 || !ok2 || len(rmaps) != len(pmaps) {
		return false
	}
	for i := range rmaps {
		if rmaps[i] != pmaps[i] && !sameGlobalData(rmaps[i], pmaps[i]) {
			return false
		}
	}
	return true
}

// sameGlobalData says whether maps a and b are global-data maps (arrays of
// one entry) of one name, both frozen or neither, with the same contents.
func sameGlobalData(a, b ebpf.MapID) bool {
	var vals [2][]byte
	var infos [2]*ebpf.MapInfo
	for i, id := range []ebpf.MapID{a, b} {
		m, err := ebpf.NewMapFromID(id)
		if err != nil {
			return false
		}
		defer m.Close()
		info, err := m.Info()
		if err != nil || info.Type != ebpf.Array || info.MaxEntries != 1 {
			return false
		}
		infos[i], vals[i] = info, make([]byte, info.ValueSize)
		if err := m.Lookup(uint32(0), &vals[i]); err != nil {
			return false
		}
	}
	return infos[0].Name == infos[1].Name && infos[0].Frozen() == infos[1].Frozen() && bytes.Equal(vals[0], vals[1])
}

// detachTCX unpins and releases the link pinned at pin; the kernel detaches
// the program when the last reference goes.
func detachTCX(pin string) error {
	l, err := link.LoadPinnedLink(pin, nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		// Unreadable pin (e.g. another kind of object): remove the name,
		// which drops the pin's reference all the same.
		if rerr := os.Remove(pin); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
			return fmt.Errorf("open pinned link %s: %w", pin, err)
		}
		return nil
	}
	defer l.Close()
	if err := l.Unpin(); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("unpin %s: %w", pin, err)
	}
	return nil
}

// A classic tc filter lives in the qdisc and cannot be pinned, and bpffs
// holds only pins and directories: an empty directory <dev>_ingress under
// tc/ records that the filter on <dev> is ours.
func writeTCRecord(path string) error {
	if err := os.Mkdir(path, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	return nil
}

// pinDevice is the device a link pin or tc record stands for.
func pinDevice(path string) string {
	return strings.TrimSuffix(filepath.Base(path), "_ingress")
}

// ensureClsact adds the clsact qdisc that classic tc filters hang off.
// Grafting a qdisc deactivates the device for a moment and drops what it
// is transmitting then, so this is done ahead of the first switch (see
// Manager.Apply for legacy) rather than during it; an existing qdisc is left
// alone, and detaching never removes it.
func ensureClsact(h nlsafe.Handle, ifindex int) (added bool, err error) {
	qdisc := &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{
			LinkIndex: ifindex,
			Handle:    netlink.MakeHandle(0xffff, 0),
			Parent:    netlink.HANDLE_CLSACT,
		},
		QdiscType: "clsact",
	}
	err = h.QdiscAdd(qdisc)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, unix.EEXIST):
		return false, nil
	}
	return false, fmt.Errorf("add clsact qdisc on ifindex %d: %w", ifindex, err)
}

// upsertTC installs prog as a direct-action filter on the clsact ingress
// hook of ifindex, replacing our previous filter atomically.
func upsertTC(h nlsafe.Handle, record string, ifindex int, prog *ebpf.Program, name string) (change, error) {
	if _, err := ensureClsact(h, ifindex); err != nil {
		return unchanged, err
	}
	filter := &netlink.BpfFilter{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: ifindex,
			Parent:    netlink.HANDLE_MIN_INGRESS,
			Handle:    tcHandle,
			Priority:  tcPriority,
			Protocol:  unix.ETH_P_ALL,
		},
		Fd:           prog.FD(),
		Name:         name,
		DirectAction: true,
	}
	if err := h.FilterReplace(filter); err != nil {
		return unchanged, fmt.Errorf("replace tc filter on ifindex %d: %w", ifindex, err)
	}
	c := updated
	if _, err := os.Stat(record); errors.Is(err, os.ErrNotExist) {
		c = attached
	}
	return c, writeTCRecord(record)
}

// removeOwnedTCFilters deletes the ingress filters on ifindex whose BPF
// program name has our prefix; anything else on the device stays.
func removeOwnedTCFilters(h nlsafe.Handle, dev string) error {
	l, err := h.LinkByName(dev)
	if err != nil {
		if nlsafe.IsNotFound(err) {
			return nil
		}
		return err
	}
	filters, err := h.FilterList(l, netlink.HANDLE_MIN_INGRESS)
	if err != nil {
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
			return nil // no clsact qdisc
		}
		return err
	}
	for _, f := range filters {
		bf, ok := f.(*netlink.BpfFilter)
		if !ok || !strings.HasPrefix(bf.Name, bpf.NamePrefix) {
			continue
		}
		if err := h.FilterDel(bf); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("delete tc filter %s on %s: %w", bf.Name, l.Attrs().Name, err)
		}
	}
	return nil
}

// detachTC removes the filter a record stands for, then the record.
func detachTC(h nlsafe.Handle, record string) error {
	if err := removeOwnedTCFilters(h, pinDevice(record)); err != nil {
		return err
	}
	if err := os.Remove(record); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// pinned lists the entries of dir, none if it does not exist.
func pinned(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names, nil
}

func linksDir(pinDir string) string { return filepath.Join(pinDir, linksSubdir) }
func tcDir(pinDir string) string    { return filepath.Join(pinDir, tcSubdir) }
