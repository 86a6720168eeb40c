// Package node is the node agent's reconciler without Kubernetes: given the
// node's RoutingNode spec (its generation and datapath), its own facts and
// its peers, Reconcile makes the kernel match, probes every peer over the
// pod network and returns the complete RoutingNode status to write. The
// controller in agent/controller feeds it from the API server; tests feed it
// directly, one Agent per node namespace.
//
// One reconcile: probe capabilities (once) → classify peers (route lookup)
// → render → refuse unsupported specs without touching anything → wire the
// health endpoint → read the kernel → plan → write the CNI configuration
// first if the route MTU goes down → apply → masquerade → CNI configuration
// → host routing → read back and re-plan (anything left means not
// converged) → probe every peer → status. status.observedGeneration is the
// generation applied and probed, all in one status.
package node

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"path/filepath"
	"slices"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/go-logr/logr"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/routemode/routemode/agent/caps"
	"github.com/routemode/routemode/agent/cniconf"
	"github.com/routemode/routemode/agent/datapath"
	"github.com/routemode/routemode/agent/endpoint"
	"github.com/routemode/routemode/agent/health"
	"github.com/routemode/routemode/agent/kernel"
	"github.com/routemode/routemode/agent/masq"
	"github.com/routemode/routemode/agent/nlsafe"
	"github.com/routemode/routemode/agent/podnet"
	"github.com/routemode/routemode/api/v1alpha1"
	"github.com/routemode/routemode/internal/bounded"
)

// Condition reasons.
const (
	ReasonApplied           = "Applied"
	ReasonNoDatapath        = "NoDatapath"
	ReasonApplyFailed       = "ApplyFailed"
	ReasonNotConverged      = "NotConverged"
	ReasonHostRoutingFailed = "HostRoutingFailed"
	ReasonAllReachable      = "AllPeersReachable"
	ReasonNoPeers           = "NoPeers"
	ReasonPeersUnreachable  = "PeersUnreachable"
	ReasonNotApplied        = "DatapathNotApplied"
)

// Config configures an Agent.
type Config struct {
	NodeName string
	// NodeNS is the node's network namespace; nil means the caller's.
	NodeNS ns.NetNS
	// Handle is a netlink handle in NodeNS.
	Handle nlsafe.Handle
	// UnderlayDevice is the device to the peers; "" picks the device that
	// holds the node IP.
	UnderlayDevice string
	// StateDir holds saved-sysctls.json, endpoints/ and ipam/.
	StateDir string
	// CNIConfDir receives cniconf.FileName.
	CNIConfDir string
	// HealthNS names the health namespace; "" means rmhealth-<node>.
	HealthNS string
	// HostRouter switches host routing; nil means LegacyHostRouter.
	HostRouter HostRouter
	// ResyncPeriod is the requeue interval when all is well; 0 means 10 s.
	ResyncPeriod time.Duration
	// ProbeAttempts and ProbeTimeout bound each peer's health probe;
	// 0 means 3 attempts of 500 ms.
	ProbeAttempts int
	ProbeTimeout  time.Duration
	Log           logr.Logger
}

// Agent reconciles one node.
type Agent struct {
	cfg    Config
	kernel *kernel.Kernel
	health *health.Endpoint
	caps   *caps.Result
	// peerTable is the full per-peer table, served on request.
	peerTable peerTable
}

// New returns an Agent; it touches nothing until Reconcile.
func New(cfg Config) (*Agent, error) {
	if cfg.NodeName == "" || cfg.StateDir == "" || cfg.CNIConfDir == "" || cfg.Handle.Handle == nil {
		return nil, errors.New("node agent: NodeName, StateDir, CNIConfDir and Handle are required")
	}
	if cfg.HealthNS == "" {
		cfg.HealthNS = health.DefaultNSName(cfg.NodeName)
	}
	if cfg.HostRouter == nil {
		cfg.HostRouter = LegacyHostRouter{}
	}
	if cfg.ResyncPeriod <= 0 {
		cfg.ResyncPeriod = 10 * time.Second
	}
	if cfg.ProbeAttempts <= 0 {
		cfg.ProbeAttempts = 3
	}
	if cfg.ProbeTimeout <= 0 {
		cfg.ProbeTimeout = 500 * time.Millisecond
	}
	a := &Agent{cfg: cfg}
	a.kernel = &kernel.Kernel{H: cfg.Handle, NS: cfg.NodeNS, StateDir: cfg.StateDir, Log: cfg.Log}
	a.health = &health.Endpoint{
		NSName: cfg.HealthNS,
		Node:   podnet.Node{Handle: cfg.Handle, NS: cfg.NodeNS},
		Store:  a.Endpoints(),
		Log:    cfg.Log,
	}
	return a, nil
}

// Endpoints is the node's endpoint directory.
func (a *Agent) Endpoints() endpoint.Store {
	return endpoint.Store{Dir: filepath.Join(a.cfg.StateDir, "endpoints")}
}

// IPAMDir is the node's address allocation directory.
func (a *Agent) IPAMDir() string { return filepath.Join(a.cfg.StateDir, "ipam") }

// HealthNS is the health namespace's name.
func (a *Agent) HealthNS() string { return a.cfg.HealthNS }

// Close stops the health responder and prober; the kernel is left as is
// (an agent restart changes nothing).
func (a *Agent) Close() { a.health.Close() }

// RemoveHealth deletes the health endpoint (for tests and uninstall).
func (a *Agent) RemoveHealth() error { return a.health.Remove() }

// Peer is another node as the API server describes it.
type Peer struct {
	Name    string
	IP      netip.Addr
	PodCIDR netip.Prefix
	// VTEPMAC overrides the MAC derived from IP (datapath.VTEPMAC); empty,
	// as the agent's controller leaves it, means derive it, which is what
	// every agent sets on its own tunnel device.
	VTEPMAC string
}

// Request is one reconcile's input.
type Request struct {
	// Generation is the RoutingNode's metadata.generation.
	Generation int64
	// Datapath is spec.datapath; nil leaves the kernel alone.
	Datapath *v1alpha1.NodeDatapath
	Self     datapath.Node
	Peers    []Peer
	// Previous is the status now stored, whose condition transition times
	// are kept.
	Previous v1alpha1.RoutingNodeStatus
}

// Result is one reconcile's outcome.
type Result struct {
	Status v1alpha1.RoutingNodeStatus
	// Changes lists every change made (kernel, nftables, files), one line
	// each, as logged; empty when the node already matched.
	Changes []string
	// RequeueAfter is when to reconcile again at the latest.
	RequeueAfter time.Duration
}

func (a *Agent) capabilities(ctx context.Context) caps.Result {
	if a.caps == nil {
		c := caps.Probe(ctx, a.cfg.HostRouter.Capabilities)
		a.caps = &c
	}
	return *a.caps
}

// Reconcile makes the node match req and reports the status.
func (a *Agent) Reconcile(ctx context.Context, req Request) Result {
	r := &run{a: a, req: req, log: a.cfg.Log.WithValues("generation", req.Generation)}
	r.status = v1alpha1.RoutingNodeStatus{
		ObservedGeneration: req.Generation,
		Conditions:         slices.Clone(req.Previous.Conditions),
	}
	r.do(ctx)
	requeue := a.cfg.ResyncPeriod
	for _, c := range r.status.Conditions {
		if c.Status != metav1.ConditionTrue {
			requeue = min(requeue, 2*time.Second)
		}
	}
	return Result{Status: r.status, Changes: r.changes, RequeueAfter: requeue}
}

type run struct {
	a       *Agent
	req     Request
	log     logr.Logger
	status  v1alpha1.RoutingNodeStatus
	changes []string
	peers   []datapath.Peer
	routes  map[string]datapath.PeerRoute
}

func (r *run) setCondition(typ string, st metav1.ConditionStatus, reason, msg string) {
	meta.SetStatusCondition(&r.status.Conditions, metav1.Condition{
		Type: typ, Status: st, Reason: reason, Message: bounded.Message(msg), ObservedGeneration: r.req.Generation,
	})
}

func (r *run) fail(reason string, err error) {
	r.setCondition(v1alpha1.ConditionDatapathApplied, metav1.ConditionFalse, reason, err.Error())
	r.setCondition(v1alpha1.ConditionPeersHealthy, metav1.ConditionUnknown, ReasonNotApplied, "peers are probed once the datapath is applied")
	r.log.Error(err, "Failed to apply datapath", "reason", reason)
}

func (r *run) do(ctx context.Context) {
	a, req := r.a, r.req
	c := a.capabilities(ctx)
	r.status.Capabilities = &c.NodeCapabilities
	self := req.Self
	if self.IP.IsValid() {
		r.status.NodeIP = self.IP.String()
		r.status.VTEPMAC = datapath.VTEPMAC(self.IP).String()
	}
	if self.PodCIDR.IsValid() {
		r.status.PodCIDR = self.PodCIDR.String()
	}
	r.classifyPeers()

	if req.Datapath == nil {
		r.setCondition(v1alpha1.ConditionDatapathApplied, metav1.ConditionUnknown, ReasonNoDatapath, "spec.datapath is unset: the kernel is left alone")
		r.setCondition(v1alpha1.ConditionPeersHealthy, metav1.ConditionUnknown, ReasonNoDatapath, "peers are probed once a datapath is applied")
		r.peerStatus(nil)
		return
	}
	spec := *req.Datapath

	underlay, underlayMTU, err := a.kernel.Underlay(a.cfg.UnderlayDevice, self.IP)
	if err != nil && self.IP.IsValid() {
		r.fail(datapath.ReasonNodeMissingFacts, err)
		r.peerStatus(nil)
		return
	}
	saved, err := a.kernel.LoadSaved()
	if err != nil {
		r.fail(ReasonApplyFailed, err)
		r.peerStatus(nil)
		return
	}
	in := datapath.Input{
		Spec: spec, Self: self, Peers: r.peers, Underlay: underlay, UnderlayMTU: underlayMTU,
		Saved:  saved,
		Kernel: datapath.KernelCaps{Release: c.Kernel, VXLAN: c.VXLAN, Geneve: c.Geneve},
	}
	// Render once without endpoints to refuse before touching anything.
	rendered, err := datapath.Render(in)
	if err != nil {
		var ref *datapath.Refusal
		if errors.As(err, &ref) {
			r.fail(ref.Reason, err)
		} else {
			r.fail(ReasonApplyFailed, err)
		}
		r.peerStatus(nil)
		return
	}
	routerIP := datapath.RouterIP(self.PodCIDR)
	podCfg := podnet.Config{RouterIP: routerIP, DeviceMTU: underlayMTU, RouteMTU: rendered.RouteMTU}
	if changed, err := a.health.Ensure(podCfg, healthIP(self.PodCIDR)); err != nil {
		r.fail(ReasonApplyFailed, err)
		r.peerStatus(nil)
		return
	} else if changed {
		r.changes = append(r.changes, "wire health endpoint "+a.cfg.HealthNS)
	}

	eps, err := a.Endpoints().List()
	if err != nil {
		r.log.Error(err, "Failed to read some endpoint records")
	}
	byKey := map[string]endpoint.Endpoint{}
	for _, ep := range eps {
		byKey[kernel.EndpointKey(ep)] = ep
	}
	in.Endpoints = slices.Sorted(maps.Keys(byKey))
	if rendered, err = datapath.Render(in); err != nil {
		r.fail(ReasonApplyFailed, err)
		r.peerStatus(nil)
		return
	}
	r.routes = map[string]datapath.PeerRoute{}
	for _, p := range rendered.Peers {
		r.routes[p.Name] = p
	}
	desired := rendered.State
	readReq := kernel.ReadRequest{SysctlKeys: sysctlKeys(desired, saved), Endpoints: eps}
	actual, err := a.kernel.Read(readReq)
	if err != nil {
		r.fail(ReasonApplyFailed, err)
		r.peerStatus(nil)
		return
	}
	ops := datapath.Plan(desired, actual)

	cniCfg := cniconf.Config{
		PodCIDR: self.PodCIDR.Masked(), RouterIP: routerIP, DeviceMTU: underlayMTU, RouteMTU: rendered.RouteMTU,
		EndpointDir: a.Endpoints().Dir, IPAMDir: a.IPAMDir(),
	}
	// New pods must never get a larger MTU than the routes allow: write the
	// configuration before lowering, after raising.
	old, oldErr := cniconf.Read(a.cfg.CNIConfDir)
	lowering := oldErr != nil || old.RouteMTU > cniCfg.RouteMTU
	if lowering {
		if err := r.writeCNI(cniCfg); err != nil {
			r.fail(ReasonApplyFailed, err)
			r.peerStatus(nil)
			return
		}
	}
	env := kernel.ApplyEnv{RouterIP: routerIP, Endpoints: byKey, HostMTU: underlayMTU}
	done, err := a.kernel.Apply(ctx, ops, env)
	for _, op := range ops[:done] {
		r.changes = append(r.changes, op.String())
	}
	if err != nil {
		r.fail(ReasonApplyFailed, err)
		r.peerStatus(nil)
		return
	}

	exempt := self.PodCIDR.Masked()
	if spec.NativeRoutingCIDR != "" {
		exempt = netip.MustParsePrefix(spec.NativeRoutingCIDR).Masked()
	}
	nsFd := -1
	if a.cfg.NodeNS != nil {
		nsFd = int(a.cfg.NodeNS.Fd())
	}
	mcfg := masq.Config{PodCIDR: self.PodCIDR.Masked(), Exempt: exempt, Underlay: underlay, NodeIP: self.IP}
	if changed, err := (masq.Masq{NetNSFd: nsFd}).Ensure(mcfg); err != nil {
		r.fail(ReasonApplyFailed, err)
		r.peerStatus(nil)
		return
	} else if changed {
		line := fmt.Sprintf("nftables ip %s: masquerade %s to %s via %s unless to %s", masq.Table, mcfg.PodCIDR, mcfg.NodeIP, mcfg.Underlay, mcfg.Exempt)
		r.log.Info("Changed kernel state", "op", line)
		r.changes = append(r.changes, line)
	}
	if !lowering {
		if err := r.writeCNI(cniCfg); err != nil {
			r.fail(ReasonApplyFailed, err)
			r.peerStatus(nil)
			return
		}
	}

	tunnelDev := ""
	if desired.Tunnel != nil {
		tunnelDev = desired.Tunnel.Name
	}
	hr, changes, err := a.cfg.HostRouter.Apply(ctx, HostRoutingRequest{
		Mode: spec.HostRouting, NodeNS: a.cfg.NodeNS, Handle: a.cfg.Handle, Underlay: underlay, TunnelDevice: tunnelDev,
		NodeIP: self.IP, PodCIDR: self.PodCIDR.Masked(), RouterIP: routerIP, NativeRoutingCIDR: exempt,
		SendMode: spec.SendMode, Endpoints: eps, StateDir: a.cfg.StateDir,
		Routes: slices.Collect(maps.Values(desired.Routes)),
	})
	r.status.Datapath.HostRouting = hr
	r.changes = append(r.changes, changes...)
	if err != nil {
		r.fail(ReasonHostRoutingFailed, err)
		r.peerStatus(nil)
		return
	}

	// Read back: whatever is still to do means the kernel did not take it.
	after, err := a.kernel.Read(readReq)
	if err != nil {
		r.fail(ReasonApplyFailed, err)
		r.peerStatus(nil)
		return
	}
	r.describe(after, rendered, eps)
	if left := datapath.Plan(desired, after); len(left) > 0 {
		r.fail(ReasonNotConverged, fmt.Errorf("the kernel does not match after applying: %d operations still pending, first: %s", len(left), left[0]))
		r.peerStatus(nil)
		return
	}
	r.setCondition(v1alpha1.ConditionDatapathApplied, metav1.ConditionTrue, ReasonApplied,
		fmt.Sprintf("tunnel %s, sending %s, route MTU %d, host routing %s", spec.Tunnel, r.status.Datapath.SendMode, rendered.RouteMTU, hr))
	r.probe(ctx)
}

func (r *run) writeCNI(c cniconf.Config) error {
	changed, err := cniconf.Write(r.a.cfg.CNIConfDir, c)
	if err != nil {
		return fmt.Errorf("writing CNI configuration: %w", err)
	}
	if changed {
		line := fmt.Sprintf("write %s (podCIDR %s, route MTU %d)", filepath.Join(r.a.cfg.CNIConfDir, cniconf.FileName), c.PodCIDR, c.RouteMTU)
		r.log.Info("Wrote CNI configuration", "file", filepath.Join(r.a.cfg.CNIConfDir, cniconf.FileName), "routeMTU", c.RouteMTU)
		r.changes = append(r.changes, line)
	}
	return nil
}

func healthIP(podCIDR netip.Prefix) netip.Addr { return datapath.RouterIP(podCIDR).Next() }

func sysctlKeys(desired datapath.State, saved map[string]string) []string {
	keys := map[string]bool{}
	for k := range desired.Sysctls {
		keys[k] = true
	}
	for k := range saved {
		keys[k] = true
	}
	return slices.Sorted(maps.Keys(keys))
}

// classifyPeers turns the request's peers into datapath peers with their
// reachability on the underlay.
func (r *run) classifyPeers() {
	for _, p := range r.req.Peers {
		if p.Name == r.req.Self.Name {
			continue
		}
		dp := datapath.Peer{Node: datapath.Node{Name: p.Name, IP: p.IP, PodCIDR: p.PodCIDR}}
		if mac, err := parseMAC(p.VTEPMAC); err == nil {
			dp.VTEPMAC = mac
		}
		if p.IP.IsValid() {
			dp.Direct, dp.DirectDev, dp.Why = r.a.kernel.Classify(p.IP)
		} else {
			dp.Why = "no InternalIP"
		}
		r.peers = append(r.peers, dp)
	}
}

// describe fills status.datapath from the kernel as read back.
func (r *run) describe(after datapath.State, rendered datapath.Rendered, eps []endpoint.Endpoint) {
	d := &r.status.Datapath
	if after.Tunnel != nil {
		d.TunnelDevice = after.Tunnel.Name
	}
	var tunnel, direct int
	for _, rt := range after.Routes {
		if rt.Dev == datapath.TunnelDevice {
			tunnel++
		} else {
			direct++
		}
	}
	switch {
	case direct > 0:
		d.SendMode = v1alpha1.SendNative
	case tunnel > 0:
		d.SendMode = v1alpha1.SendTunnel
	default:
		d.SendMode = r.req.Datapath.SendMode
	}
	d.RouteMTU = int32(rendered.RouteMTU)
	for _, ep := range eps {
		if ep.ContainerID == health.ContainerID {
			if mtu, ok := after.PodMTU[kernel.EndpointKey(ep)]; ok && mtu > 0 {
				d.RouteMTU = int32(mtu)
			}
			continue
		}
		d.Endpoints++
	}
}

// probe pings every usable peer's health endpoint and sets PeersHealthy.
func (r *run) probe(ctx context.Context) {
	var targets []health.Target
	for _, p := range r.peers {
		if p.PodCIDR.IsValid() && p.IP.IsValid() {
			targets = append(targets, health.Target{Name: p.Name, IP: healthIP(p.PodCIDR)})
		}
	}
	results := r.a.health.Probe(ctx, targets, r.a.cfg.ProbeAttempts, r.a.cfg.ProbeTimeout)
	byName := map[string]health.Result{}
	var unreachable []string
	for _, res := range results {
		byName[res.Name] = res
		if !res.Reachable {
			unreachable = append(unreachable, res.Name)
		}
	}
	r.peerStatus(byName)
	switch {
	case len(targets) == 0:
		r.setCondition(v1alpha1.ConditionPeersHealthy, metav1.ConditionTrue, ReasonNoPeers, "no peers to probe")
	case len(unreachable) == 0:
		r.setCondition(v1alpha1.ConditionPeersHealthy, metav1.ConditionTrue, ReasonAllReachable,
			fmt.Sprintf("all %d peers answer on the pod network", len(targets)))
	default:
		slices.Sort(unreachable)
		r.setCondition(v1alpha1.ConditionPeersHealthy, metav1.ConditionFalse, ReasonPeersUnreachable,
			fmt.Sprintf("%d of %d peers do not answer on the pod network: %s", len(unreachable), len(targets), bounded.Names(unreachable, bounded.DefaultNames)))
	}
}
