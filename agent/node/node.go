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
// converged) → probe every peer. Each step records what it saw in one
// observation and returns its error; the first error ends the reconcile.
// The status is then computed once from the observation (status.go, a
// function per condition), with status.observedGeneration the generation
// applied and probed.
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

	"github.com/routemode/routemode/agent/caps"
	"github.com/routemode/routemode/agent/cniconf"
	"github.com/routemode/routemode/agent/datapath"
	"github.com/routemode/routemode/agent/endpoint"
	"github.com/routemode/routemode/agent/health"
	"github.com/routemode/routemode/agent/kernel"
	"github.com/routemode/routemode/agent/masq"
	"github.com/routemode/routemode/agent/nlsafe"
	"github.com/routemode/routemode/agent/nsutil"
	"github.com/routemode/routemode/agent/podnet"
	"github.com/routemode/routemode/api/v1alpha1"
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
	// ProcSys is the /proc/sys mount sysctls are written through; "" means
	// nsutil.DefaultProcSys.
	ProcSys string
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
	// ProbeBudget caps the peers probed per reconcile in steady state;
	// 0 means DefaultProbeBudget, below 0 probes every peer every time.
	ProbeBudget int
	Log         logr.Logger
}

// Agent reconciles one node.
type Agent struct {
	cfg    Config
	kernel *kernel.Kernel
	health *health.Endpoint
	caps   *caps.Result
	// peerTable is the full per-peer table, served on request.
	peerTable peerTable
	prober    prober
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
	if cfg.ProbeBudget == 0 {
		cfg.ProbeBudget = DefaultProbeBudget
	}
	if cfg.ProbeTimeout <= 0 {
		cfg.ProbeTimeout = 500 * time.Millisecond
	}
	a := &Agent{cfg: cfg}
	sysctls := nsutil.Sysctls{ProcSys: cfg.ProcSys}
	a.kernel = &kernel.Kernel{H: cfg.Handle, NS: cfg.NodeNS, Sysctls: sysctls, StateDir: cfg.StateDir, Log: cfg.Log}
	a.health = &health.Endpoint{
		NSName: cfg.HealthNS,
		Node:   podnet.Node{Handle: cfg.Handle, NS: cfg.NodeNS, Sysctls: sysctls},
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
	// Probes are the health probes this reconcile sent, one per peer
	// probed (a rotating subset in steady state), for metrics; the peer
	// table also keeps older answers.
	Probes []health.Result
}

func (a *Agent) capabilities(ctx context.Context) caps.Result {
	if a.caps == nil {
		c := caps.Probe(ctx, a.cfg.HostRouter.Capabilities)
		a.caps = &c
	}
	return *a.caps
}

// Reconcile makes the node match req and reports the status. The steps
// record what they see in one observation and stop at the first error;
// the status is computed from it once, at the end (status.go).
func (a *Agent) Reconcile(ctx context.Context, req Request) Result {
	r := &run{a: a, req: req, log: a.cfg.Log.WithValues("generation", req.Generation)}
	r.obs = observation{Generation: req.Generation, Spec: req.Datapath, Self: req.Self}
	if err := r.reconcile(ctx); err != nil {
		r.obs.Err = err
		r.log.Error(err, "Failed to apply datapath", "reason", failureReason(err))
	}
	st := computeStatus(req.Previous, r.obs)
	a.peerTable.set(peerRows(r.obs))
	return Result{Status: st, Changes: r.changes, RequeueAfter: requeueAfter(st, a.cfg.ResyncPeriod), Probes: r.probed}
}

// run is one reconcile.
type run struct {
	a       *Agent
	req     Request
	log     logr.Logger
	obs     observation
	changes []string
	// probed are this reconcile's own probe results (obs.Probes also
	// holds earlier answers of peers not probed this time).
	probed []health.Result
}

// target is what one reconcile applies, as prepare works it out.
type target struct {
	underlay    string
	underlayMTU int
	rendered    datapath.Rendered
	endpoints   []endpoint.Endpoint
	byKey       map[string]endpoint.Endpoint
	read        kernel.ReadRequest
}

func (r *run) reconcile(ctx context.Context) error {
	r.obs.Capabilities = r.a.capabilities(ctx).NodeCapabilities
	r.obs.Peers = r.classifyPeers()
	if r.req.Datapath == nil {
		return nil
	}
	t, err := r.prepare()
	if err != nil {
		return err
	}
	if err := r.applyKernel(ctx, t); err != nil {
		return err
	}
	if err := r.applyHostRouting(ctx, t); err != nil {
		return failed(ReasonHostRoutingFailed, err)
	}
	if err := r.verify(t); err != nil {
		return err
	}
	r.obs.Probes = r.probe(ctx)
	return nil
}

// prepare renders the desired state, refusing a spec it cannot apply
// before anything is touched, and wires the health endpoint, which the
// second render counts among the endpoints.
func (r *run) prepare() (*target, error) {
	a, self, c := r.a, r.req.Self, r.obs.Capabilities
	t := &target{}
	var err error
	t.underlay, t.underlayMTU, err = a.kernel.Underlay(a.cfg.UnderlayDevice, self.IP)
	if err != nil && self.IP.IsValid() {
		return nil, failed(datapath.ReasonNodeMissingFacts, err)
	}
	saved, err := a.kernel.LoadSaved()
	if err != nil {
		return nil, err
	}
	in := datapath.Input{
		Spec: *r.req.Datapath, Self: self, Peers: r.obs.Peers, Underlay: t.underlay, UnderlayMTU: t.underlayMTU,
		Saved:  saved,
		Kernel: datapath.KernelCaps{Release: c.Kernel, VXLAN: c.VXLAN, Geneve: c.Geneve},
	}
	rendered, err := datapath.Render(in)
	if err != nil {
		return nil, err
	}
	podCfg := podnet.Config{RouterIP: datapath.RouterIP(self.PodCIDR), DeviceMTU: t.underlayMTU, RouteMTU: rendered.RouteMTU}
	if changed, err := a.health.Ensure(podCfg, healthIP(self.PodCIDR)); err != nil {
		return nil, err
	} else if changed {
		r.changes = append(r.changes, "wire health endpoint "+a.cfg.HealthNS)
	}

	if t.endpoints, err = a.Endpoints().List(); err != nil {
		r.log.Error(err, "Failed to read some endpoint records")
	}
	t.byKey, in.Endpoints = kernel.LocalEndpoints(t.endpoints)
	if t.rendered, err = datapath.Render(in); err != nil {
		return nil, err
	}
	r.obs.Routes = map[string]datapath.PeerRoute{}
	for _, p := range t.rendered.Peers {
		r.obs.Routes[p.Name] = p
	}
	t.read = kernel.ReadRequest{SysctlKeys: sysctlKeys(t.rendered.State, saved), Endpoints: t.endpoints}
	return t, nil
}

// applyKernel applies the plan, masquerading and the CNI configuration.
func (r *run) applyKernel(ctx context.Context, t *target) error {
	a, self, spec := r.a, r.req.Self, *r.req.Datapath
	actual, err := a.kernel.Read(t.read)
	if err != nil {
		return err
	}
	ops := datapath.Plan(t.rendered.State, actual)

	routerIP := datapath.RouterIP(self.PodCIDR)
	cniCfg := cniconf.Config{
		PodCIDR: self.PodCIDR.Masked(), RouterIP: routerIP, DeviceMTU: t.underlayMTU, RouteMTU: t.rendered.RouteMTU,
		EndpointDir: a.Endpoints().Dir, IPAMDir: a.IPAMDir(),
	}
	// New pods must never get a larger MTU than the routes allow: write the
	// configuration before lowering, after raising.
	old, oldErr := cniconf.Read(a.cfg.CNIConfDir)
	lowering := oldErr != nil || old.RouteMTU > cniCfg.RouteMTU
	if lowering {
		if err := r.writeCNI(cniCfg); err != nil {
			return err
		}
	}
	env := kernel.ApplyEnv{RouterIP: routerIP, Endpoints: t.byKey, HostMTU: t.underlayMTU}
	done, err := a.kernel.Apply(ctx, ops, env)
	for _, op := range ops[:done] {
		r.changes = append(r.changes, op.String())
	}
	if err != nil {
		return err
	}

	nsFd := -1
	if a.cfg.NodeNS != nil {
		nsFd = int(a.cfg.NodeNS.Fd())
	}
	mcfg := masq.Config{PodCIDR: self.PodCIDR.Masked(), Exempt: nativeRoutingCIDR(spec, self), Underlay: t.underlay, NodeIP: self.IP,
		Nodes: r.nodeIPs()}
	lines, err := (masq.Masq{NetNSFd: nsFd}).Ensure(mcfg)
	for _, line := range lines {
		r.log.Info("Changed kernel state", "op", line)
	}
	r.changes = append(r.changes, lines...)
	if err != nil {
		return err
	}
	if !lowering {
		return r.writeCNI(cniCfg)
	}
	return nil
}

// nodeIPs are the IPv4 InternalIPs of this node and of the peers whose
// pods it reaches over the underlay, which masquerading leaves alone
// (agent/masq says why). Not those reached through the tunnel: their
// answers to a pod come back through the tunnel, so its packets must not
// reach them on the underlay with a pod source, which strict reverse-path
// filtering drops. The masquerade table is IPv4 only.
func (r *run) nodeIPs() []netip.Addr {
	out := []netip.Addr{r.req.Self.IP}
	for _, p := range r.obs.Peers {
		via := r.obs.Routes[p.Name].Via
		if p.IP.Is4() && (via == datapath.ViaDirect || via == datapath.ViaUnderlay) {
			out = append(out, p.IP)
		}
	}
	return out
}

// nativeRoutingCIDR holds every pod address: the spec's, or the node's
// podCIDR when the spec leaves it empty.
func nativeRoutingCIDR(spec v1alpha1.NodeDatapath, self datapath.Node) netip.Prefix {
	if spec.NativeRoutingCIDR != "" {
		return netip.MustParsePrefix(spec.NativeRoutingCIDR).Masked()
	}
	return self.PodCIDR.Masked()
}

func (r *run) applyHostRouting(ctx context.Context, t *target) error {
	spec := *r.req.Datapath
	tunnelDev := ""
	if t.rendered.State.Tunnel != nil {
		tunnelDev = t.rendered.State.Tunnel.Name
	}
	hr, changes, err := r.a.cfg.HostRouter.Apply(ctx, HostRoutingRequest{
		Mode: spec.HostRouting, Underlay: t.underlay, TunnelDevice: tunnelDev,
		NativeRoutingCIDR: nativeRoutingCIDR(spec, r.req.Self), Endpoints: t.endpoints,
		Routes: slices.Collect(maps.Values(t.rendered.State.Routes)),
	})
	r.obs.HostRouting = hr
	r.changes = append(r.changes, changes...)
	return err
}

// verify reads the kernel back: whatever is still to do means the kernel
// did not take it.
func (r *run) verify(t *target) error {
	after, err := r.a.kernel.Read(t.read)
	if err != nil {
		return err
	}
	r.obs.ReadBack = &readBack{State: after, RouteMTU: t.rendered.RouteMTU, Endpoints: t.endpoints}
	if left := datapath.Plan(t.rendered.State, after); len(left) > 0 {
		return failed(ReasonNotConverged, fmt.Errorf("the kernel does not match after applying: %d operations still pending, first: %s", len(left), left[0]))
	}
	return nil
}

func (r *run) writeCNI(c cniconf.Config) error {
	changed, err := cniconf.Write(r.a.cfg.CNIConfDir, c)
	if err != nil {
		return fmt.Errorf("writing CNI configuration: %w", err)
	}
	if changed {
		file := filepath.Join(r.a.cfg.CNIConfDir, cniconf.FileName)
		r.log.Info("Wrote CNI configuration", "file", file, "routeMTU", c.RouteMTU)
		r.changes = append(r.changes, fmt.Sprintf("write %s (podCIDR %s, route MTU %d)", file, c.PodCIDR, c.RouteMTU))
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
func (r *run) classifyPeers() []datapath.Peer {
	var out []datapath.Peer
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
		out = append(out, dp)
	}
	return out
}

// probe pings the peers that have a health endpoint: all of them when the
// datapath changed, a bounded rotating subset in steady state (probeplan.go).
// It returns every peer's latest result, this reconcile's or an earlier one.
func (r *run) probe(ctx context.Context) map[string]health.Result {
	var targets []health.Target
	for _, p := range r.obs.Peers {
		if p.PodCIDR.IsValid() && p.IP.IsValid() {
			targets = append(targets, health.Target{Name: p.Name, IP: healthIP(p.PodCIDR)})
		}
	}
	pr := &r.a.prober
	chosen := pr.pick(targets, pr.fullSweep(r.req.Generation, r.req.Previous), r.a.cfg.ProbeBudget)
	r.probed = r.a.health.Probe(ctx, chosen, r.a.cfg.ProbeAttempts, r.a.cfg.ProbeTimeout)
	return pr.record(targets, r.probed)
}
