// Package v1alpha1 holds the routemode.io/v1alpha1 API: the cluster's
// RoutingMode and the per-node RoutingNode objects that carry a rollout to
// each node's agent.
//
// +kubebuilder:object:generate=true
// +groupName=routemode.io
package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

var (
	// GroupVersion is the group and version of every type in this package.
	GroupVersion = schema.GroupVersion{Group: "routemode.io", Version: "v1alpha1"}

	// SchemeBuilder registers the types with a runtime.Scheme.
	SchemeBuilder = runtime.NewSchemeBuilder(addKnownTypes)

	// AddToScheme adds the types in this group-version to a scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)

func addKnownTypes(scheme *runtime.Scheme) error {
	scheme.AddKnownTypes(GroupVersion,
		&RoutingMode{}, &RoutingModeList{},
		&RoutingNode{}, &RoutingNodeList{},
	)
	metav1.AddToGroupVersion(scheme, GroupVersion)
	return nil
}
