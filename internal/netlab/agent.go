package netlab

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/go-logr/logr"

	"github.com/routemode/routemode/agent/datapath"
	"github.com/routemode/routemode/agent/node"
	"github.com/routemode/routemode/api/v1alpha1"
	"github.com/routemode/routemode/controllers/rollout"
)

// NewAgent returns a fresh agent for the node, as a restarted agent process
// would be; Close the node's current agent first.
func (n *Node) NewAgent() (*node.Agent, error) {
	health := fmt.Sprintf("%shealth-%d", n.Lab.ID, n.Index)
	if err := n.Lab.state.add(func(r *record) { r.Namespaces = append(r.Namespaces, health) }); err != nil {
		return nil, err
	}
	var hr node.HostRouter
	if n.Lab.spec.HostRouter != nil {
		hr = n.Lab.spec.HostRouter(n)
	}
	return node.New(node.Config{
		NodeName:     n.Name,
		NodeNS:       n.NS,
		Handle:       n.Handle,
		StateDir:     n.StateDir,
		CNIConfDir:   n.CNIConfDir,
		HealthNS:     health,
		HostRouter:   hr,
		ProbeTimeout: 300 * time.Millisecond,
		Log:          n.Logger(),
	})
}

// Logger is the node's logger.
func (n *Node) Logger() logr.Logger { return n.Lab.spec.Log.WithName(n.Name) }

// Peers is what node n's agent learns of the other nodes: their facts and
// the VTEP MAC they published. Hidden nodes are left out of every node's
// peers (a node that has not joined, or has left); extra peers are added
// (nodes that exist only in the API, e.g. beyond a gateway).
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

// Healthy is the operator's gate on the node's current step
// (rollout.Healthy); the string says why not.
func (n *Node) Healthy() (bool, string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return rollout.Healthy(rollout.Node{Name: n.Name, Generation: n.Generation, Status: n.Status})
}

// Step is one rollout step: it writes d to nodes and converges them. It
// returns the changes each node made on its first reconcile of the step.
func (l *Lab) Step(ctx context.Context, nodes []*Node, d v1alpha1.NodeDatapath, timeout time.Duration) (map[string][]string, error) {
	for _, n := range nodes {
		n.SetDatapath(d)
	}
	return l.Converge(ctx, nodes, timeout)
}

// Converge reconciles nodes concurrently, again and again (as resync
// would), until each passes the operator's gate, or fails after timeout.
// It returns the changes each node made on its first reconcile.
func (l *Lab) Converge(ctx context.Context, nodes []*Node, timeout time.Duration) (map[string][]string, error) {
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
			return first, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return first, fmt.Errorf("nodes did not converge within %s: %v", timeout, why)
		}
		// The agents' resync interval, shortened: what the next round
		// waits for (peers' probes, a neighbour) needs time, not an event
		// the lab could watch.
		time.Sleep(100 * time.Millisecond)
	}
}
