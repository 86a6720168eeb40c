//go:build linux

/*
Copyright 2026 The routemode Authors.

Licensed under the Apache License, Version 2.0.
*/

package hostrouting

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/routemode/routemode/agent/nsutil"
	"github.com/routemode/routemode/bpf"
)

// Capabilities is what the kernel offers for host routing.
type Capabilities struct {
	// BPFHostRouting: routemode's programs load: tc BPF programs with
	// bpf_redirect_peer, bpf_redirect_neigh, bpf_fib_lookup and the
	// conntrack kfuncs (Linux >= 6.0 with nf_conntrack).
	BPFHostRouting bool
	// TCX: tc BPF links (Linux >= 6.6); without them programs are attached
	// as classic tc filters on a clsact qdisc.
	TCX bool
	// Reason says why BPFHostRouting is false.
	Reason string
}

var (
	probeOnce sync.Once
	probed    Capabilities
)

// Probe reports the kernel's capabilities. The result is computed once per
// process (the kernel does not change under a running agent).
func Probe() Capabilities {
	probeOnce.Do(func() { probed = probe() })
	return probed
}

func probe() Capabilities {
	var c Capabilities
	var missing []string
	if err := features.HaveProgramType(ebpf.SchedCLS); err != nil {
		missing = append(missing, describe("tc BPF programs", err))
	} else {
		for _, h := range []asm.BuiltinFunc{asm.FnRedirectPeer, asm.FnRedirectNeigh, asm.FnFibLookup} {
			if err := features.HaveProgramHelper(ebpf.SchedCLS, h); err != nil {
				missing = append(missing, describe("helper "+h.String(), err))
			}
		}
	}
	if len(missing) == 0 {
		if err := programsLoad(); err != nil {
			missing = append(missing, err.Error())
		}
	}
	c.BPFHostRouting = len(missing) == 0
	c.Reason = strings.Join(missing, "; ")
	if c.BPFHostRouting {
		c.TCX = haveTCX()
	}
	return c
}

func describe(what string, err error) string {
	if errors.Is(err, ebpf.ErrNotSupported) {
		return what + " not supported by the kernel"
	}
	return fmt.Sprintf("%s: probe failed: %v", what, err)
}

// programsLoad loads routemode's programs, unpinned, and closes them: the
// verifier, the kfuncs and the CO-RE relocations all have their say before
// anything is attached. The conntrack kfuncs live in nf_conntrack, which
// may be a module nothing has loaded yet: a conntrack dump loads it.
func programsLoad() error {
	loadConntrack()
	spec, err := bpf.LoadSpec(bpf.Config{NativeRoutingCIDR: netip.MustParsePrefix("10.0.0.0/8")})
	if err != nil {
		return err
	}
	for _, m := range spec.Maps {
		m.Pinning = ebpf.PinNone
	}
	coll, err := ebpf.NewCollection(spec)
	if err != nil {
		if errors.Is(err, ebpf.ErrNotSupported) {
			return fmt.Errorf("the programs need what this kernel lacks (the conntrack kfuncs need Linux 6.0 and nf_conntrack): %w", err)
		}
		return fmt.Errorf("loading the programs: %w", err)
	}
	coll.Close()
	return nil
}

// loadConntrack asks for the conntrack table of a scratch namespace, which
// makes the kernel load nf_conntrack if it is a module. Errors are left to
// the program load that follows.
func loadConntrack() {
	_ = nsutil.InScratch(func() error {
		h, err := netlink.NewHandle(unix.NETLINK_NETFILTER)
		if err != nil {
			return err
		}
		defer h.Close()
		_, err = h.ConntrackTableList(netlink.ConntrackTable, unix.AF_INET)
		return err
	})
}

// haveTCX attaches a trivial program to an interface index that cannot
// exist: a kernel with TCX answers ENODEV, one without it cannot parse the
// request at all.
func haveTCX() bool {
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:         ebpf.SchedCLS,
		License:      "Dual MIT/GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()},
	})
	if err != nil {
		return false
	}
	defer prog.Close()
	l, err := link.AttachTCX(link.TCXOptions{Interface: math.MaxInt32, Program: prog, Attach: ebpf.AttachTCXIngress})
	if err == nil {
		l.Close()
		return true
	}
	return !errors.Is(err, ebpf.ErrNotSupported)
}
