package nodefacts

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// fullNode is a Node as a kubelet reports it, with everything routemode ignores.
func fullNode(name string) *corev1.Node {
	return &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name, UID: "u-1", ResourceVersion: "7",
			Labels:        map[string]string{"kubernetes.io/hostname": name},
			Annotations:   map[string]string{"node.alpha.kubernetes.io/ttl": "0"},
			ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubelet"}}},
		Spec: corev1.NodeSpec{PodCIDR: "10.0.1.0/24", PodCIDRs: []string{"10.0.1.0/24"}, ProviderID: "aws:///eu-west-1a/i-0",
			Taints: []corev1.Taint{{Key: "k", Effect: corev1.TaintEffectNoSchedule}}},
		Status: corev1.NodeStatus{
			Addresses: []corev1.NodeAddress{{Type: corev1.NodeHostName, Address: name}, {Type: corev1.NodeInternalIP, Address: "192.168.0.10"},
				{Type: corev1.NodeExternalIP, Address: "203.0.113.10"}},
			Conditions:  []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}},
			Images:      []corev1.ContainerImage{{Names: []string{"registry.k8s.io/pause:3.10"}, SizeBytes: 1 << 20}},
			NodeInfo:    corev1.NodeSystemInfo{KernelVersion: "6.18.44"},
			Capacity:    corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("2")},
			Allocatable: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("2")},
		},
	}
}

func TestTransform(t *testing.T) {
	full := fullNode("node-1")
	if Check(full) == "" {
		t.Fatal("Check finds nothing to strip in a full Node")
	}
	got, err := Transform(full)
	if err != nil {
		t.Fatal(err)
	}
	n := got.(*corev1.Node)
	if why := Check(n); why != "" {
		t.Errorf("stripped Node still holds %s", why)
	}
	if n.Name != "node-1" || n.UID != "u-1" || n.ResourceVersion != "7" || n.Spec.PodCIDR != "10.0.1.0/24" || len(n.Spec.PodCIDRs) != 1 ||
		len(n.Status.Addresses) != 1 || n.Status.Addresses[0].Address != "192.168.0.10" {
		t.Errorf("stripped Node lost a fact: %+v", n)
	}
	if other, _ := Transform("tombstone"); other != "tombstone" {
		t.Errorf("non-Node objects must pass unchanged")
	}
}
