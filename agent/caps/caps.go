// Package caps probes what the node's kernel can do, by trying: VXLAN and
// Geneve devices are created in a throwaway network namespace that vanishes
// with the probing thread. BPF host routing and TCX are probed by the host
// routing implementation through the HostRouting hook.
package caps

import (
	"context"
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/routemode/routemode/agent/nsutil"
	"github.com/routemode/routemode/api/v1alpha1"
)

// HostRouting reports whether BPF host routing and TCX attachment work, and
// why not; agent/hostrouting provides it.
type HostRouting func(ctx context.Context) (bpfHostRouting, tcx bool, reason string)

// Result is the capabilities with the reasons for the missing ones.
type Result struct {
	v1alpha1.NodeCapabilities
	VXLANError, GeneveError error
}

// Probe tests the kernel. hostRouting may be nil.
func Probe(ctx context.Context, hostRouting HostRouting) Result {
	var r Result
	var u unix.Utsname
	if err := unix.Uname(&u); err == nil {
		r.Kernel = unix.ByteSliceToString(u.Release[:])
	}
	r.VXLANError, r.GeneveError = probeTunnels()
	r.VXLAN, r.Geneve = r.VXLANError == nil, r.GeneveError == nil
	if hostRouting != nil {
		r.BPFHostRouting, r.TCX, r.BPFHostRoutingReason = hostRouting(ctx)
	}
	return r
}

// probeTunnels creates a VXLAN and a Geneve device in a fresh namespace.
func probeTunnels() (vxlanErr, geneveErr error) {
	err := nsutil.InScratch(func() error {
		h, err := netlink.NewHandle()
		if err != nil {
			return err
		}
		defer h.Close()
		vxlanErr = tryLink(h, &netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{Name: "rmprobe_vxlan"}, VxlanId: 1, Port: 8472})
		geneveErr = tryLink(h, &netlink.Geneve{LinkAttrs: netlink.LinkAttrs{Name: "rmprobe_geneve"}, FlowBased: true, Dport: 6081})
		return nil
	})
	if err != nil {
		return err, err
	}
	return vxlanErr, geneveErr
}

func tryLink(h *netlink.Handle, l netlink.Link) error {
	if err := h.LinkAdd(l); err != nil {
		if errors.Is(err, unix.EOPNOTSUPP) {
			return fmt.Errorf("%s devices are not supported by this kernel: %w", l.Type(), err)
		}
		return fmt.Errorf("creating a %s device: %w", l.Type(), err)
	}
	_ = h.LinkDel(l)
	return nil
}
