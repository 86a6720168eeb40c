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
	"slices"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/go-logr/logr"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/routemode/routemode/agent/nlsafe"
	"github.com/routemode/routemode/agent/nsutil"
	"github.com/routemode/routemode/api/v1alpha1"
	"github.com/routemode/routemode/bpf"
)

// Options configure a Manager.
type Options struct {
	// Handle is a netlink handle in the node's network namespace, the one
	// the rest of the agent uses; required. The caller closes it.
	Handle nlsafe.Handle
	// NetNS is the path of the node's network namespace
	// (e.g. /var/run/netns/node-1), where TCX links are attached; empty
	// means the caller's.
	NetNS string
	// Logger receives one line per change; the zero value discards.
	Logger logr.Logger
	// ClassicTC attaches classic tc filters even where TCX works, to
	// exercise the fallback for kernels older than 6.6.
	ClassicTC bool
	// Disabled, when set, is why this node must not load programs (the
	// agent's --legacy-host-routing-only). Capabilities reports it and
	// Apply refuses bpf, but legacy still detaches the programs an earlier
	// run left pinned: a node must never run programs its agent disowns.
	Disabled string
}

// Manager attaches and detaches the host-routing programs of one node. Its
// methods are safe for concurrent use.
type Manager struct {
	opts  Options
	log   logr.Logger
	probe func() Capabilities

	mu sync.Mutex
	// coll holds the programs this Manager loaded, reused while their
	// configuration and pinned maps stay the same.
	coll   *ebpf.Collection
	loaded bpf.Config
	pinDir string
	// lastPinDir is the pin dir of the last Apply, for Counters.
	lastPinDir string
}

// NewManager returns a Manager. It touches nothing until Apply.
func NewManager(opts Options) *Manager {
	log := opts.Logger
	if log.GetSink() == nil {
		log = logr.Discard()
	}
	probe := Probe
	if opts.Disabled != "" {
		probe = func() Capabilities { return Capabilities{Reason: opts.Disabled} }
	}
	return &Manager{opts: opts, log: log, probe: probe}
}

// Capabilities is what this Manager can do on the node: Probe, unless
// Options.Disabled says otherwise.
func (m *Manager) Capabilities() Capabilities { return m.probe() }

// Close releases the Manager's file descriptors. Attached programs stay
// attached through their pins: closing is what an agent restart does.
func (m *Manager) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.dropCollection()
	return nil
}

func (m *Manager) dropCollection() {
	if m.coll != nil {
		m.coll.Close()
		m.coll = nil
	}
}

// Apply makes the node's host routing match mode: for bpf, attach (or
// update in place) the programs on the underlay, the tunnel device and every
// endpoint's lxc device and sync the endpoint and direct-route maps to eps
// and cfg.DirectRoutes; for legacy, detach every program under cfg.PinDir
// and empty the direct-route map. Endpoints whose device is missing or whose
// record is unusable are skipped and reported in the returned error after
// everything else was applied (errors.Is(err, ErrEndpointSkipped)).
//
// A cancelled ctx stops Apply between two kernel changes; every change is
// whole, and the next Apply carries on from the state it left.
//
// It returns the changes it made to the kernel, one line each, as logged;
// none when the node already matched. Changes made before an error are
// returned with it.
func (m *Manager) Apply(ctx context.Context, mode v1alpha1.HostRouting, cfg Config, eps []Endpoint) ([]string, error) {
	if err := cfg.validate(mode == v1alpha1.HostRoutingBPF); err != nil {
		return nil, fmt.Errorf("host routing config: %w", err)
	}
	if m.opts.Handle.Handle == nil {
		return nil, errNoHandle
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m.lastPinDir = cfg.PinDir
	j := &journal{log: m.log}
	switch mode {
	case v1alpha1.HostRoutingBPF:
		caps := m.probe()
		if !caps.BPFHostRouting {
			return nil, fmt.Errorf("%w: %s", ErrUnsupported, caps.Reason)
		}
		err := m.applyBPF(ctx, j, cfg, eps, !m.classicTC())
		if err != nil && !errors.Is(err, ErrEndpointSkipped) {
			return j.lines, err
		}
		// The forwarding programs report to a monitor themselves.
		return j.lines, errors.Join(err, detachObserve(j, cfg.PinDir))
	case v1alpha1.HostRoutingLegacy, "":
		if err := m.detach(ctx, j, cfg.PinDir, false); err != nil {
			return j.lines, err
		}
		if err := clearDirectRoutes(j, cfg.PinDir); err != nil {
			return j.lines, err
		}
		// Legacy routing is the stack's own: preparing for a later switch
		// must never make it fail.
		if err := m.prepareClassicTC(j, cfg, eps); err != nil {
			m.log.Error(err, "Failed to prepare clsact qdiscs for a later switch to bpf")
		}
		// Nor must a monitor: it waits, and says so, until this works.
		if err := m.applyObserve(ctx, j, cfg, eps); err != nil {
			m.log.Error(err, "Failed to attach or detach the monitor's observe-only programs")
		}
		return j.lines, nil
	}
	return nil, fmt.Errorf("unknown host routing mode %q", mode)
}

var errNoHandle = errors.New("host routing: the Manager has no netlink handle (Options.Handle)")

// journal collects the kernel changes of one Apply.
type journal struct {
	log   logr.Logger
	lines []string
}

func (j *journal) add(format string, args ...any) {
	line := fmt.Sprintf(format, args...)
	j.log.Info("Changed host routing", "op", line)
	j.lines = append(j.lines, line)
}

// prepareClassicTC adds clsact qdiscs to the devices while the node is in
// legacy mode, where classic tc will be used: adding one later, during the
// switch to bpf, would drop the packets the device is sending at that
// moment. Without TCX this is what makes the switch lossless; with TCX
// nothing is needed.
func (m *Manager) prepareClassicTC(j *journal, cfg Config, eps []Endpoint) error {
	if cfg.Underlay == "" || !m.classicTC() {
		return nil
	}
	h := m.opts.Handle
	underlay, tunnel, links, err := resolveDevices(h, cfg)
	if err != nil {
		return err
	}
	_, lxcs, _ := endpointEntries(eps, links)
	var errs []error
	for _, a := range plan(underlay, tunnel, lxcs) {
		added, err := ensureClsact(h, a.Ifindex)
		if added {
			j.add("qdisc add dev %s clsact", a.Dev)
		}
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// classicTC reports whether programs go in as classic tc filters.
func (m *Manager) classicTC() bool {
	caps := m.probe()
	return caps.BPFHostRouting && (m.opts.ClassicTC || !caps.TCX)
}

// ErrEndpointSkipped marks endpoints Apply could not serve with BPF; their
// traffic keeps going through the stack.
var ErrEndpointSkipped = errors.New("endpoint skipped")

// Remove detaches everything and deletes the node's maps and pin directory:
// for uninstalling, not for switching to legacy (which keeps the maps for
// the next switch and for `bpf endpoint list`).
func (m *Manager) Remove(pinDir string) error {
	if m.opts.Handle.Handle == nil {
		return errNoHandle
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	j := &journal{log: m.log}
	if err := detachObserve(j, pinDir); err != nil {
		return err
	}
	return m.detach(context.Background(), j, pinDir, true)
}

// InForce is the host routing a node's pin directory shows: bpf while any
// of routemode's programs is attached there, legacy otherwise. After a
// failed Apply it is the mode the node is really in.
func InForce(pinDir string) v1alpha1.HostRouting {
	for _, d := range []string{linksDir(pinDir), tcDir(pinDir)} {
		if pins, err := pinned(d); err != nil || len(pins) > 0 {
			return v1alpha1.HostRoutingBPF // unreadable: assume the worse
		}
	}
	return v1alpha1.HostRoutingLegacy
}

func (m *Manager) applyBPF(ctx context.Context, j *journal, cfg Config, eps []Endpoint, useTCX bool) error {
	if err := EnsureBPFFS(cfg.PinDir); err != nil {
		return err
	}
	for _, d := range []string{linksDir(cfg.PinDir), tcDir(cfg.PinDir)} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return err
		}
	}
	h := m.opts.Handle
	underlay, tunnel, links, err := resolveDevices(h, cfg)
	if err != nil {
		return err
	}
	entries, lxcs, skipped := endpointEntries(eps, links)

	bcfg := bpf.Config{NativeRoutingCIDR: cfg.NativeRoutingCIDR}
	if tunnel != nil && tunnel.FlowBased {
		bcfg.FlowBasedTunnelIfindex = uint32(tunnel.Index)
	}
	coll, fresh, err := m.programs(j, cfg.PinDir, bcfg)
	if err != nil {
		return err
	}
	if fresh {
		// Until the links point at the new programs the old ones keep
		// serving; if anything below fails, drop the new ones.
		defer func() {
			if coll != m.coll {
				coll.Close()
			}
		}()
	}

	// Maps first: a program must never redirect to a pod the map does
	// not know yet, nor to one whose entry is stale.
	if err := syncMap(j, coll.Maps[bpf.MapEndpoints], entries, endpointKey); err != nil {
		return err
	}
	if err := syncMap(j, coll.Maps[bpf.MapDirectRoutes], directRouteEntries(cfg.DirectRoutes, underlay), directRouteKey); err != nil {
		return err
	}
	if err := clearStaleMonitor(j, cfg.PinDir, coll.Maps[bpf.MapMonitor]); err != nil {
		return err
	}

	// Programs that forward already (an agent restarted or upgraded,
	// devices added) go on forwarding while their links are updated; new
	// ones leave every packet to the stack until all are attached.
	armedMap := coll.Maps[bpf.MapArmed]
	if InForce(cfg.PinDir) == v1alpha1.HostRoutingBPF {
		if err := setArmed(j, armedMap, true); err != nil {
			return err
		}
	}
	// TCX resolves the ifindex in the calling thread's namespace.
	var podErrs []error
	if err := nsutil.RunIn(m.opts.NetNS, func() (err error) {
		podErrs, err = m.attachAll(ctx, j, h, cfg.PinDir, coll, plan(underlay, tunnel, lxcs), useTCX)
		return err
	}); err != nil {
		return err
	}
	if err := setArmed(j, armedMap, true); err != nil {
		return err
	}
	// A pod whose device refused its program keeps the stack's path,
	// like a skipped endpoint; the others have theirs, and the new
	// programs are in force.
	skipped = append(skipped, podErrs...)
	if fresh {
		m.dropCollection()
		m.coll, m.loaded, m.pinDir = coll, bcfg, cfg.PinDir
	}
	if len(skipped) > 0 {
		return fmt.Errorf("%w: %w", ErrEndpointSkipped, errors.Join(skipped...))
	}
	return nil
}

// resolveDevices looks up the configured devices and indexes all links by
// ifindex for the endpoints.
func resolveDevices(h nlsafe.Handle, cfg Config) (underlay device, tunnel *device, byIndex map[int]device, err error) {
	all, err := h.LinkList()
	if err != nil {
		return device{}, nil, nil, fmt.Errorf("list links: %w", err)
	}
	byIndex = make(map[int]device, len(all))
	byName := make(map[string]device, len(all))
	for _, l := range all {
		a := l.Attrs()
		d := device{Name: a.Name, Index: a.Index, MTU: a.MTU, MAC: a.HardwareAddr}
		if vx, ok := l.(*netlink.Vxlan); ok {
			d.FlowBased = vx.FlowBased
		}
		byIndex[a.Index] = d
		byName[a.Name] = d
	}
	underlay, ok := byName[cfg.Underlay]
	if !ok {
		return device{}, nil, nil, fmt.Errorf("underlay device %q not found", cfg.Underlay)
	}
	if cfg.TunnelDevice != "" {
		if t, ok := byName[cfg.TunnelDevice]; ok {
			tunnel = &t
		}
	}
	// The network-side devices are not endpoints, whatever a record says.
	delete(byIndex, underlay.Index)
	if tunnel != nil {
		delete(byIndex, tunnel.Index)
	}
	return underlay, tunnel, byIndex, nil
}

// programs returns loaded programs for bcfg, reusing this Manager's when
// nothing changed. A new Manager (an agent restart) always loads its own;
// attachAll keeps the running programs of the pinned links that are the
// same (sameProgram) and swaps its own into the others.
func (m *Manager) programs(j *journal, pinDir string, bcfg bpf.Config) (*ebpf.Collection, bool, error) {
	if m.coll != nil && m.loaded == bcfg && m.pinDir == pinDir && mapsPinned(pinDir) {
		return m.coll, false, nil
	}
	coll, err := loadCollection(pinDir, bcfg)
	if errors.Is(err, ebpf.ErrMapIncompatible) {
		// An older build's maps: start over with fresh ones. The old
		// programs keep using the old maps until their links are updated.
		j.add("replace the pinned maps in %s: %v", pinDir, err)
		for _, name := range bpf.PinnedMaps {
			if err := os.Remove(filepath.Join(pinDir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
				return nil, false, err
			}
		}
		coll, err = loadCollection(pinDir, bcfg)
	}
	if err != nil {
		return nil, false, err
	}
	return coll, true, nil
}

func mapsPinned(pinDir string) bool {
	for _, name := range bpf.PinnedMaps {
		if _, err := os.Stat(filepath.Join(pinDir, name)); err != nil {
			return false
		}
	}
	return true
}

func loadCollection(pinDir string, bcfg bpf.Config) (*ebpf.Collection, error) {
	spec, err := bpf.LoadSpec(bcfg)
	if err != nil {
		return nil, err
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{
		Maps: ebpf.MapOptions{PinPath: pinDir},
	})
	if err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("load host-routing programs: %+v", ve)
		}
		return nil, fmt.Errorf("load host-routing programs: %w", err)
	}
	return coll, nil
}

func progFor(coll *ebpf.Collection, r role) (*ebpf.Program, string) {
	name := map[role]string{roleNetdev: bpf.ProgFromNetdev, roleOverlay: bpf.ProgFromOverlay, roleLXC: bpf.ProgFromLXC}[r]
	return coll.Programs[name], name
}

// attachAll attaches or updates atts in order, then removes our
// attachments that are no longer wanted (and those of the other attach
// flavour). Pods' devices that fail are returned apart (podErrs): they must
// not keep the others from their programs.
func (m *Manager) attachAll(ctx context.Context, j *journal, h nlsafe.Handle, pinDir string, coll *ebpf.Collection, atts []attachment, useTCX bool) (podErrs []error, err error) {
	want := make(map[string]bool, len(atts))
	for _, a := range atts {
		if err := ctx.Err(); err != nil {
			return podErrs, err
		}
		prog, name := progFor(coll, a.Role)
		pin := a.pinName()
		want[pin] = true
		var (
			c   change
			err error
		)
		if useTCX {
			c, err = upsertTCX(filepath.Join(linksDir(pinDir), pin), a.Ifindex, prog)
		} else {
			c, err = upsertTC(h, filepath.Join(tcDir(pinDir), pin), a.Ifindex, prog, name)
		}
		switch {
		case err == nil:
		case a.Role != roleLXC:
			// Pods' devices are attached only once the network side is.
			return nil, fmt.Errorf("%s: %w", a.Dev, err)
		case errors.Is(err, unix.ENODEV):
			// A pod deleted since the devices were listed took its device
			// with it; the link event of that reconciles again.
			delete(want, pin)
			m.log.V(1).Info("Pod device gone before its program was attached", "device", a.Dev)
			continue
		default:
			podErrs = append(podErrs, fmt.Errorf("%s: attaching its program: %w", a.Dev, err))
			continue
		}
		if c != unchanged {
			j.add("%s ingress %s: %s %s", flavour(useTCX), a.Dev, c, name)
		}
	}

	// TCX runs before classic tc, so a leftover filter of ours would see
	// nothing anyway; remove it all the same (kernel upgrade, flag change).
	var errs []error
	tcs, err := pinned(tcDir(pinDir))
	if err != nil {
		return podErrs, err
	}
	for _, r := range tcs {
		if useTCX || !want[r] {
			j.detached(&errs, detachTC(h, filepath.Join(tcDir(pinDir), r)), false, r)
		}
	}
	lks, err := pinned(linksDir(pinDir))
	if err != nil {
		return podErrs, err
	}
	for _, l := range lks {
		if !useTCX || !want[l] {
			j.detached(&errs, detachTCX(filepath.Join(linksDir(pinDir), l)), true, l)
		}
	}
	return podErrs, errors.Join(errs...)
}

// flavour names an attachment's kind, in change lines.
func flavour(tcx bool) string {
	if tcx {
		return "tcx"
	}
	return "tc"
}

// detached records the detach of the attachment pinned as pin, or its
// error.
func (j *journal) detached(errs *[]error, err error, tcx bool, pin string) {
	if err != nil {
		*errs = append(*errs, err)
		return
	}
	j.add("%s ingress %s: detached", flavour(tcx), pinDevice(pin))
}

// detach removes every attachment recorded under pinDir. The programs are
// disarmed first, so that every flow returns to the stack both ways at
// once; pods' devices are detached first for programs of a build without
// the flag.
func (m *Manager) detach(ctx context.Context, j *journal, pinDir string, purge bool) error {
	m.dropCollection()
	if err := disarm(j, pinDir); err != nil {
		return err
	}
	lks, err := pinned(linksDir(pinDir))
	if err != nil {
		return err
	}
	tcs, err := pinned(tcDir(pinDir))
	if err != nil {
		return err
	}
	// Unpinning a TCX link is a bpffs operation and a classic filter is
	// deleted through the handle: neither needs the caller in the node's
	// namespace.
	var errs []error
	for _, l := range orderForDetach(lks) {
		if err := ctx.Err(); err != nil {
			return err
		}
		j.detached(&errs, detachTCX(filepath.Join(linksDir(pinDir), l)), true, l)
	}
	for _, r := range orderForDetach(tcs) {
		if err := ctx.Err(); err != nil {
			return err
		}
		j.detached(&errs, detachTC(m.opts.Handle, filepath.Join(tcDir(pinDir), r)), false, r)
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if !purge {
		return nil
	}
	for _, name := range bpf.PinnedMaps {
		if err := os.Remove(filepath.Join(pinDir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	for _, d := range []string{linksDir(pinDir), tcDir(pinDir), observeDir(pinDir), pinDir} {
		if err := os.Remove(d); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return nil
}

// orderForDetach puts pod devices (lxc*) before the rest.
func orderForDetach(pins []string) []string {
	out := slices.Clone(pins)
	slices.SortStableFunc(out, func(a, b string) int {
		return boolRank(!isLXCPin(a)) - boolRank(!isLXCPin(b))
	})
	return out
}

func isLXCPin(p string) bool { return len(p) >= 3 && p[:3] == "lxc" }

func boolRank(b bool) int {
	if b {
		return 1
	}
	return 0
}

// setArmed sets the flag that lets the forwarding programs forward
// (rm_armed in bpf/hostrouting.c); a change is journalled.
func setArmed(j *journal, flag *ebpf.Map, on bool) error {
	var cur, want uint32
	if err := flag.Lookup(uint32(0), &cur); err != nil {
		return fmt.Errorf("read %s: %w", bpf.MapArmed, err)
	}
	if on {
		want = 1
	}
	if cur == want {
		return nil
	}
	if err := flag.Put(uint32(0), want); err != nil {
		return fmt.Errorf("write %s: %w", bpf.MapArmed, err)
	}
	if on {
		j.add("programs armed: every device has its program")
	} else {
		j.add("programs disarmed: the stack routes every packet")
	}
	return nil
}

// disarm clears the pinned flag under pinDir; without one (no programs, or
// a build without the flag) there is nothing to clear.
func disarm(j *journal, pinDir string) error {
	flag, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, bpf.MapArmed), nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("open %s in %s: %w", bpf.MapArmed, pinDir, err)
	}
	defer flag.Close()
	return setArmed(j, flag, false)
}
