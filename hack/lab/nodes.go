package lab

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// buildUnderlay makes the underlay: a bridge in a namespace of its own and
// one node namespace per node, each with eth0 on the bridge. The veth pairs
// are created directly in their namespaces, never in the host's.
func (l *Lab) buildUnderlay() error {
	under := l.cfg.Prefix + "rmlab-underlay"
	if err := l.addNamespace(under); err != nil {
		return err
	}
	for _, args := range [][]string{
		{"-n", under, "link", "add", "br0", "type", "bridge"},
		{"-n", under, "link", "set", "br0", "up"},
	} {
		if _, err := run("ip", args...); err != nil {
			return err
		}
	}
	for i := 1; i <= l.cfg.Nodes; i++ {
		n := Node{Name: l.nodeName(i), NS: l.nodeName(i), IP: NodeIP(i), PodCIDR: PodCIDR(i)}
		if err := l.addNamespace(n.NS); err != nil {
			return err
		}
		port := fmt.Sprintf("veth-node%d", i)
		for _, args := range [][]string{
			{"link", "add", "eth0", "netns", n.NS, "type", "veth", "peer", "name", port, "netns", under},
			{"-n", under, "link", "set", port, "master", "br0", "up"},
			{"-n", n.NS, "link", "set", "lo", "up"},
			{"-n", n.NS, "addr", "add", n.IP.String() + "/24", "dev", "eth0"},
			{"-n", n.NS, "link", "set", "eth0", "up"},
		} {
			if _, err := run("ip", args...); err != nil {
				return err
			}
		}
		// A node forwards for its pods; strict reverse-path filtering, as
		// many distributions ship it, shows whether the agent loosens it
		// where the mixed phase needs that.
		for _, kv := range []string{"net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=1", "net.ipv4.conf.default.rp_filter=1"} {
			if _, err := run("ip", "netns", "exec", n.NS, "sysctl", "-qw", kv); err != nil {
				return err
			}
		}
		l.Nodes = append(l.Nodes, n)
	}
	return nil
}

func (l *Lab) addNamespace(name string) error {
	if _, err := run("ip", "netns", "add", name); err != nil {
		return err
	}
	l.state.Namespaces = append(l.state.Namespaces, name)
	return l.saveState()
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
