package lab

import (
	"context"
	"fmt"
	"slices"

	"github.com/routemode/routemode/agent/nsutil"
	"github.com/routemode/routemode/internal/netlab"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// buildNodes makes the nodes with internal/netlab: one namespace per node
// on a bridge in a namespace of its own, with strict reverse-path
// filtering, as many distributions ship it, to show whether the agent
// loosens it where the mixed phase needs that. netlab records them in the
// lab's directory, for Down; the lab's processes keep them after Up
// returns.
func (l *Lab) buildNodes() error {
	nl, err := netlab.Build(netlab.Spec{Nodes: l.cfg.Nodes, RPFilter: 1, Prefix: l.cfg.Prefix,
		StateFile: l.path(netlabState), Dir: l.path("nodes")})
	if err != nil {
		return err
	}
	defer nl.Detach()
	l.state.Underlay = nl.UnderlayNS
	for _, n := range nl.Nodes {
		l.Nodes = append(l.Nodes, Node{Name: n.NSName, NS: n.NSName, IP: n.IP, PodCIDR: n.PodCIDR})
	}
	return l.saveState()
}

// addNamespace creates a pod's namespace, recorded first so that Down
// removes it.
func (l *Lab) addNamespace(name string) error {
	l.state.Namespaces = append(l.state.Namespaces, name)
	if err := l.saveState(); err != nil {
		return err
	}
	n, err := nsutil.Create(name)
	if err != nil {
		return err
	}
	return n.Close()
}

// registerNodes creates the Node objects as a kubelet and the node IPAM
// would: podCIDR, InternalIP and a Ready condition.
func (l *Lab) registerNodes(ctx context.Context, cs kubernetes.Interface) error {
	for _, n := range l.Nodes {
		if err := registerNode(ctx, cs, n); err != nil {
			return err
		}
	}
	return nil
}

// registerNode creates n's Node in one request with its addresses and
// Ready condition, as a kubelet registers (a Node's create keeps its
// status): a Node without an InternalIP for a moment would stall a rollout
// it joins (NodeMissingFacts).
func registerNode(ctx context.Context, cs kubernetes.Interface, n Node) error {
	obj := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: n.Name, Labels: map[string]string{"kubernetes.io/hostname": n.Name}},
		Spec:       corev1.NodeSpec{PodCIDR: n.PodCIDR.String(), PodCIDRs: []string{n.PodCIDR.String()}},
		Status: corev1.NodeStatus{
			Addresses: []corev1.NodeAddress{
				{Type: corev1.NodeInternalIP, Address: n.IP.String()},
				{Type: corev1.NodeHostName, Address: n.Name},
			},
			Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue,
				Reason: "KubeletReady", Message: "routemode lab node", LastHeartbeatTime: metav1.Now(), LastTransitionTime: metav1.Now()}},
		},
	}
	if _, err := cs.CoreV1().Nodes().Create(ctx, obj, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("registering node %s: %w", n.Name, err)
	}
	return nil
}

// removeNode takes n out of the cluster as a drained machine leaves it:
// its agent is stopped for good and its Node object deleted. Its namespace
// and pod stay, for addNode.
func (l *Lab) removeNode(ctx context.Context, n Node) error {
	cs, err := kubernetes.NewForConfig(l.cp.restConfig())
	if err != nil {
		return err
	}
	if err := l.stopSupervised("agent-" + n.NS); err != nil {
		return err
	}
	return cs.CoreV1().Nodes().Delete(ctx, n.Name, metav1.DeleteOptions{})
}

// addNode brings a node removeNode took out back as a new node joins: its
// Node object registered again and its agent started with a token bound
// to the new object (the old one died with the old object).
func (l *Lab) addNode(ctx context.Context, n Node) error {
	cs, err := kubernetes.NewForConfig(l.cp.restConfig())
	if err != nil {
		return err
	}
	if err := registerNode(ctx, cs, n); err != nil {
		return err
	}
	if err := l.agentKubeconfig(ctx, cs, n); err != nil {
		return err
	}
	return l.spawnAgent(n)
}

// node is the lab's node in namespace ns, nil if there is none.
func (l *Lab) node(ns string) *Node {
	i := slices.IndexFunc(l.Nodes, func(n Node) bool { return n.NS == ns })
	if i < 0 {
		return nil
	}
	return &l.Nodes[i]
}

// nodeIndex is the index in l.Nodes of the node named name (its
// namespace's name too).
func (l *Lab) nodeIndex(name string) (int, error) {
	if i := slices.IndexFunc(l.Nodes, func(n Node) bool { return n.NS == name }); i >= 0 {
		return i, nil
	}
	return -1, fmt.Errorf("no node %s in the lab", name)
}
