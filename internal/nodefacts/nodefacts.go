// Package nodefacts keeps, of a Node, only what routemode uses: its name,
// UID, InternalIP addresses and podCIDRs. A Node object carries its images,
// conditions, labels and managed fields, often 10–20 KB; cached whole on
// every agent for every peer it is the largest thing an agent holds, and at
// 5,000 nodes it would not fit. Transform is given to controller-runtime's
// cache (cache.ByObject.Transform), so the informer stores the stripped
// object and the rest is dropped as each watch event is decoded.
package nodefacts

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Transform strips a *corev1.Node to its facts; other objects (the
// informer's DeletedFinalStateUnknown tombstones) pass unchanged.
func Transform(obj any) (any, error) {
	n, ok := obj.(*corev1.Node)
	if !ok {
		return obj, nil
	}
	return Strip(n), nil
}

// Strip returns the facts of n: name, UID, resourceVersion, creation and
// deletion times, spec.podCIDR(s) and the InternalIP addresses.
func Strip(n *corev1.Node) *corev1.Node {
	out := &corev1.Node{
		TypeMeta: n.TypeMeta,
		ObjectMeta: metav1.ObjectMeta{
			Name: n.Name, UID: n.UID, ResourceVersion: n.ResourceVersion,
			CreationTimestamp: n.CreationTimestamp, DeletionTimestamp: n.DeletionTimestamp,
		},
		Spec: corev1.NodeSpec{PodCIDR: n.Spec.PodCIDR, PodCIDRs: n.Spec.PodCIDRs},
	}
	for _, a := range n.Status.Addresses {
		if a.Type == corev1.NodeInternalIP {
			out.Status.Addresses = append(out.Status.Addresses, a)
		}
	}
	return out
}

// Check reports what a cached Node holds beyond its facts, "" if nothing:
// tests use it to prove a cache was built with Transform.
func Check(n *corev1.Node) string {
	switch {
	case len(n.Labels) > 0 || len(n.Annotations) > 0:
		return fmt.Sprintf("labels or annotations (%d, %d)", len(n.Labels), len(n.Annotations))
	case len(n.ManagedFields) > 0:
		return "managed fields"
	case len(n.Status.Images) > 0 || len(n.Status.Conditions) > 0:
		return fmt.Sprintf("images or conditions (%d, %d)", len(n.Status.Images), len(n.Status.Conditions))
	case n.Status.NodeInfo != (corev1.NodeSystemInfo{}) || len(n.Status.Capacity) > 0 || len(n.Status.Allocatable) > 0:
		return "node info or capacity"
	case len(n.Spec.Taints) > 0 || n.Spec.ProviderID != "":
		return "taints or provider ID"
	}
	for _, a := range n.Status.Addresses {
		if a.Type != corev1.NodeInternalIP {
			return "a " + string(a.Type) + " address"
		}
	}
	return ""
}
