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
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"
)

// Capabilities is what the kernel offers for host routing.
type Capabilities struct {
	// BPFHostRouting: tc BPF programs with bpf_redirect_peer,
	// bpf_redirect_neigh and bpf_fib_lookup (Linux >= 5.10).
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
