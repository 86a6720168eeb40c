package nslab

import (
	"context"
	"fmt"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/routemode/routemode/agent/datapath"
	"github.com/routemode/routemode/agent/node"
	"github.com/routemode/routemode/api/v1alpha1"
)

// Datapaths of the rollout steps between VXLAN tunnelling and native routing
// with auto-direct-node-routes, as the operator orders them.
var (
	// Tunnel is the steady tunnel mode.
	Tunnel = v1alpha1.NodeDatapath{Tunnel: v1alpha1.TunnelVXLAN, TunnelPort: v1alpha1.DefaultTunnelPort,
		SendMode: v1alpha1.SendTunnel, RouteMTU: v1alpha1.RouteMTUTunnel, HostRouting: v1alpha1.HostRoutingLegacy}
	// Native is the steady native mode.
	Native = v1alpha1.NodeDatapath{Tunnel: v1alpha1.TunnelDisabled, TunnelPort: v1alpha1.DefaultTunnelPort,
		SendMode: v1alpha1.SendNative, NativeRoutingCIDR: PodPrefix.String(), AutoDirectNodeRoutes: true,
		RouteMTU: v1alpha1.RouteMTUFull, HostRouting: v1alpha1.HostRoutingLegacy}
	// PrepareToNative receives both ways while still tunnelling.
	PrepareToNative = with(Tunnel, func(d *v1alpha1.NodeDatapath) {
		d.LooseRPFilter = true
		d.NativeRoutingCIDR = PodPrefix.String()
	})
	// SwitchToNative sends natively, still receiving both ways.
	SwitchToNative = with(Native, func(d *v1alpha1.NodeDatapath) {
		d.Tunnel, d.RouteMTU, d.LooseRPFilter = v1alpha1.TunnelVXLAN, v1alpha1.RouteMTUTunnel, true
	})
	// PrepareToTunnel adds the tunnel and lowers the route MTU while still
	// sending natively.
	PrepareToTunnel = SwitchToNative
	// SwitchToTunnel tunnels again, still receiving both ways.
	SwitchToTunnel = with(PrepareToNative, func(*v1alpha1.NodeDatapath) {})
)

func with(d v1alpha1.NodeDatapath, f func(*v1alpha1.NodeDatapath)) v1alpha1.NodeDatapath {
	f(&d)
	return d
}

// Peers is what node n's agent learns of the other nodes: their facts and
// the VTEP MAC they published.
// Hidden nodes are left out of every node's peers (a node that has not
// joined, or has left); ExtraPeers are added to them (nodes that exist only
// in the API, e.g. beyond a gateway).
func (l *Lab) Peers(n *Node) []node.Peer {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []node.Peer
	for _, p := range l.Nodes {
		if p == n || l.hidden[p.Name] {
			continue
		}
		p.mu.Lock()
		peer := node.Peer{Name: p.Name, IP: p.IP, PodCIDR: p.PodCIDR, VTEPMAC: p.Status.VTEPMAC}
		p.mu.Unlock()
		out = append(out, peer)
	}
	return append(out, l.extra...)
}

// Hide takes node n out of (hide) or back into everybody's peers.
func (l *Lab) Hide(n *Node, hide bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.hidden == nil {
		l.hidden = map[string]bool{}
	}
	l.hidden[n.Name] = hide
}

// SetExtraPeers sets peers that exist only in the API.
func (l *Lab) SetExtraPeers(peers ...node.Peer) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.extra = peers
}

// SetDatapath writes the node's spec.datapath, bumping its generation.
func (n *Node) SetDatapath(d v1alpha1.NodeDatapath) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.Generation++
	n.Datapath = &d
}

// Reconcile runs the node's agent once on its current spec, as its
// controller would, and stores the status it reports.
func (n *Node) Reconcile(ctx context.Context) node.Result {
	n.mu.Lock()
	req := node.Request{
		Generation: n.Generation,
		Datapath:   n.Datapath,
		Self:       datapath.Node{Name: n.Name, IP: n.IP, PodCIDR: n.PodCIDR},
		Previous:   n.Status,
	}
	n.mu.Unlock()
	req.Peers = n.Lab.Peers(n)
	res := n.Agent.Reconcile(ctx, req)
	n.mu.Lock()
	n.Status = res.Status
	n.mu.Unlock()
	return res
}

// Healthy is the operator's gate: the agent reported the current
// generation, applied it and reaches every peer. The string says why not.
func (n *Node) Healthy() (bool, string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	st := n.Status
	if st.ObservedGeneration != n.Generation {
		return false, fmt.Sprintf("%s: observed generation %d, want %d", n.Name, st.ObservedGeneration, n.Generation)
	}
	for _, typ := range []string{v1alpha1.ConditionDatapathApplied, v1alpha1.ConditionPeersHealthy} {
		c := meta.FindStatusCondition(st.Conditions, typ)
		if c == nil || c.Status != metav1.ConditionTrue || c.ObservedGeneration != n.Generation {
			if c == nil {
				return false, fmt.Sprintf("%s: no %s condition", n.Name, typ)
			}
			return false, fmt.Sprintf("%s: %s=%s %s: %s", n.Name, typ, c.Status, c.Reason, c.Message)
		}
	}
	return true, ""
}

// Step is one rollout step: it writes d to nodes and reconciles them
// concurrently, again and again (as resync would) until every one passes
// the operator's gate, or fails the test after timeout. It returns the
// changes each node made on its first reconcile of the step.
func (l *Lab) Step(ctx context.Context, nodes []*Node, d v1alpha1.NodeDatapath, timeout time.Duration) map[string][]string {
	l.T.Helper()
	for _, n := range nodes {
		n.SetDatapath(d)
	}
	return l.Converge(ctx, nodes, timeout)
}

// Converge reconciles nodes until each passes the gate; see Step.
func (l *Lab) Converge(ctx context.Context, nodes []*Node, timeout time.Duration) map[string][]string {
	l.T.Helper()
	first := map[string][]string{}
	var mu sync.Mutex
	deadline := time.Now().Add(timeout)
	for round := 0; ; round++ {
		var wg sync.WaitGroup
		for _, n := range nodes {
			if ok, _ := n.Healthy(); ok && round > 0 {
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				res := n.Reconcile(ctx)
				if round == 0 {
					mu.Lock()
					first[n.Name] = res.Changes
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		var why []string
		for _, n := range nodes {
			if ok, w := n.Healthy(); !ok {
				why = append(why, w)
			}
		}
		if len(why) == 0 {
			return first
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			l.T.Fatalf("nodes did not converge within %s: %v", timeout, why)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
