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
		obj := &corev1.Node{
			ObjectMeta: metav1.ObjectMeta{Name: n.Name, Labels: map[string]string{"kubernetes.io/hostname": n.Name}},
			Spec:       corev1.NodeSpec{PodCIDR: n.PodCIDR.String(), PodCIDRs: []string{n.PodCIDR.String()}},
		}
		created, err := cs.CoreV1().Nodes().Create(ctx, obj, metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("registering node %s: %w", n.Name, err)
		}
		created.Status.Addresses = []corev1.NodeAddress{
			{Type: corev1.NodeInternalIP, Address: n.IP.String()},
			{Type: corev1.NodeHostName, Address: n.Name},
		}
		created.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue,
			Reason: "KubeletReady", Message: "routemode lab node", LastHeartbeatTime: metav1.Now(), LastTransitionTime: metav1.Now()}}
		if _, err := cs.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
			return fmt.Errorf("reporting node %s's addresses: %w", n.Name, err)
		}
	}
	return nil
}

// node is the lab's node in namespace ns, nil if there is none.
func (l *Lab) node(ns string) *Node {
	i := slices.IndexFunc(l.Nodes, func(n Node) bool { return n.NS == ns })
	if i < 0 {
		return nil
	}
	return &l.Nodes[i]
}
