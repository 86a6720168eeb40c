package caps

import (
	"context"
	"testing"

	"github.com/routemode/routemode/internal/privileged"
)

// TestProbeThisKernel expects what this machine's kernel has: VXLAN but no
// Geneve (CONFIG_GENEVE unset). On another kernel, adjust or skip.
func TestProbeThisKernel(t *testing.T) {
	privileged.Require(t, "creates devices in a scratch namespace")
	called := false
	r := Probe(context.Background(), func(context.Context) (bool, bool, string) { called = true; return false, true, "no kfunc" })
	t.Logf("kernel %s: vxlan=%v (%v) geneve=%v (%v)", r.Kernel, r.VXLAN, r.VXLANError, r.Geneve, r.GeneveError)
	if r.Kernel == "" || !r.VXLAN || !called || r.BPFHostRouting || !r.TCX || r.BPFHostRoutingReason != "no kfunc" {
		t.Errorf("capabilities %+v", r)
	}
	if r.Geneve {
		t.Skip("this kernel has Geneve; the refusal test expects one without")
	}
	if r.GeneveError == nil {
		t.Error("no reason for missing Geneve")
	}
}
