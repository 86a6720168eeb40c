package config_test

import (
	"context"
	"slices"
	"strings"
	"testing"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// TestKubectlApplyInstallsEverything runs `kubectl apply -k config/default`
// for real on an API server that has nothing installed, and checks that
// every object of the build now exists.
func TestKubectlApplyInstallsEverything(t *testing.T) {
	c := installed(t)
	t.Logf("kubectl apply -k config/default:\n%s", installOut)
	ctx := context.Background()

	objs := kustomize(t, "config/default")
	lines := strings.Split(strings.TrimSpace(installOut), "\n")
	if len(lines) != len(objs) {
		t.Errorf("kubectl printed %d lines for %d objects", len(lines), len(objs))
	}
	for _, l := range lines {
		if !strings.HasSuffix(l, " created") {
			t.Errorf("on a pristine server, want every object created: %q", l)
		}
	}
	for _, u := range objs {
		got := u.DeepCopy()
		if err := c.client.Get(ctx, client.ObjectKeyFromObject(u), got); err != nil {
			t.Errorf("%s: %v", id(u), err)
		}
	}

	// Spot checks of what the objects must say, read back from the server.
	ds := &appsv1.DaemonSet{}
	if err := c.client.Get(ctx, client.ObjectKey{Namespace: namespace, Name: "routemode-agent"}, ds); err != nil {
		t.Fatal(err)
	}
	pod := ds.Spec.Template.Spec
	if !pod.HostNetwork || pod.HostPID || pod.PriorityClassName != "system-node-critical" || pod.ServiceAccountName != "routemode-agent" {
		t.Errorf("agent pod: hostNetwork %v hostPID %v priority %q serviceAccount %q", pod.HostNetwork, pod.HostPID, pod.PriorityClassName, pod.ServiceAccountName)
	}
	if len(pod.Tolerations) != 1 || pod.Tolerations[0].Operator != corev1.TolerationOpExists || pod.Tolerations[0].Key != "" {
		t.Errorf("agent tolerations %v, want one `operator: Exists`", pod.Tolerations)
	}
	if ds.Spec.UpdateStrategy.RollingUpdate == nil || ds.Spec.UpdateStrategy.RollingUpdate.MaxUnavailable.IntValue() != 1 {
		t.Errorf("agent update strategy %+v", ds.Spec.UpdateStrategy)
	}
	agent := pod.Containers[0]
	caps := agent.SecurityContext.Capabilities
	if want := []corev1.Capability{"NET_ADMIN", "BPF", "PERFMON", "SYS_ADMIN"}; !equalCaps(caps.Add, want) || !equalCaps(caps.Drop, []corev1.Capability{"ALL"}) {
		t.Errorf("agent capabilities add %v drop %v", caps.Add, caps.Drop)
	}
	if p := agent.SecurityContext.Privileged; p != nil && *p {
		t.Error("agent is privileged")
	}
	if len(agent.Env) == 0 || agent.Env[0].Name != "NODE_NAME" || agent.Env[0].ValueFrom == nil || agent.Env[0].ValueFrom.FieldRef.FieldPath != "spec.nodeName" {
		t.Errorf("agent env %v, want NODE_NAME from spec.nodeName", agent.Env)
	}
	for _, a := range []string{"--node-name=$(NODE_NAME)", "--cni-conf-dir=/etc/cni/net.d", "--state-dir=/var/run/routemode", "--cni-bin-dir="} {
		if !slices.Contains(agent.Args, a) {
			t.Errorf("agent args %v lack %s", agent.Args, a)
		}
	}
	if agent.LivenessProbe == nil || agent.LivenessProbe.HTTPGet.Path != "/healthz" || agent.ReadinessProbe == nil || agent.ReadinessProbe.HTTPGet.Path != "/readyz" {
		t.Errorf("agent probes %+v %+v", agent.LivenessProbe, agent.ReadinessProbe)
	}
	mounts := map[string]corev1.VolumeMount{}
	for _, m := range agent.VolumeMounts {
		mounts[m.MountPath] = m
	}
	for path, prop := range map[string]corev1.MountPropagationMode{"/sys/fs/bpf": corev1.MountPropagationHostToContainer, "/var/run/netns": corev1.MountPropagationHostToContainer, "/etc/cni/net.d": "", "/var/run/routemode": ""} {
		m, ok := mounts[path]
		if !ok {
			t.Errorf("agent does not mount %s", path)
			continue
		}
		if got := m.MountPropagation; (prop == "" && got != nil && *got != corev1.MountPropagationNone) || (prop != "" && (got == nil || *got != prop)) {
			t.Errorf("agent mount %s propagation %v, want %q", path, got, prop)
		}
	}
	if len(pod.InitContainers) != 1 || pod.InitContainers[0].VolumeMounts[0].MountPath != "/host/opt/cni/bin" {
		t.Errorf("agent init containers %+v, want one installing into /host/opt/cni/bin", pod.InitContainers)
	}

	dep := &appsv1.Deployment{}
	if err := c.client.Get(ctx, client.ObjectKey{Namespace: namespace, Name: "routemode-operator"}, dep); err != nil {
		t.Fatal(err)
	}
	op := dep.Spec.Template.Spec.Containers[0]
	sc := op.SecurityContext
	if sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
		sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation || !equalCaps(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) ||
		sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("operator securityContext %+v", sc)
	}
	if op.LivenessProbe == nil || op.LivenessProbe.HTTPGet.Path != "/healthz" || op.LivenessProbe.HTTPGet.Port.String() != "health" ||
		op.ReadinessProbe == nil || op.ReadinessProbe.HTTPGet.Path != "/readyz" {
		t.Errorf("operator probes %+v %+v", op.LivenessProbe, op.ReadinessProbe)
	}
	if op.Ports[0].Name != "metrics" || op.Ports[0].ContainerPort != 8443 || op.Ports[1].ContainerPort != 8081 {
		t.Errorf("operator ports %+v", op.Ports)
	}
	if !strings.Contains(strings.Join(op.Args, " "), "--leader-elect=true") {
		t.Errorf("operator args %v, want leader election on", op.Args)
	}
	if op.Resources.Requests.Cpu().IsZero() || op.Resources.Requests.Memory().IsZero() {
		t.Errorf("operator resource requests %v", op.Resources.Requests)
	}

	for _, name := range []string{"routingmodes.routemode.io", "routingnodes.routemode.io"} {
		crd := &apiextensionsv1.CustomResourceDefinition{}
		if err := c.client.Get(ctx, client.ObjectKey{Name: name}, crd); err != nil {
			t.Fatal(err)
		}
		established := false
		for _, cond := range crd.Status.Conditions {
			established = established || (cond.Type == apiextensionsv1.Established && cond.Status == apiextensionsv1.ConditionTrue)
		}
		if !established {
			t.Errorf("CRD %s not established: %+v", name, crd.Status.Conditions)
		}
	}
	vapb := &admissionv1.ValidatingAdmissionPolicyBinding{}
	if err := c.client.Get(ctx, client.ObjectKey{Name: "routemode-agent-own-routingnode"}, vapb); err != nil {
		t.Fatal(err)
	}
	if len(vapb.Spec.ValidationActions) != 1 || vapb.Spec.ValidationActions[0] != admissionv1.Deny {
		t.Errorf("binding validationActions %v, want [Deny]", vapb.Spec.ValidationActions)
	}

	// Applying again changes nothing.
	out, stderr, err := c.kubectl("apply", "-k", "config/default")
	if err != nil {
		t.Fatalf("second kubectl apply -k config/default: %v\n%s%s", err, out, stderr)
	}
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if !strings.HasSuffix(l, " unchanged") {
			t.Errorf("second apply changed something: %q", l)
		}
	}
}

func equalCaps(a, b []corev1.Capability) bool { return slices.Equal(a, b) }

// TestRBACIsLeastPrivilege checks the installed bindings and that no role
// grants wildcards, secrets, pods or privilege escalation; what each
// service account may do as a whole is TestServiceAccountPermissions'.
func TestRBACIsLeastPrivilege(t *testing.T) {
	c := installed(t)
	ctx := context.Background()
	agent := &rbacv1.ClusterRole{}
	if err := c.client.Get(ctx, client.ObjectKey{Name: "routemode-agent"}, agent); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"routemode-operator", "routemode-agent"} {
		b := &rbacv1.ClusterRoleBinding{}
		if err := c.client.Get(ctx, client.ObjectKey{Name: name}, b); err != nil {
			t.Fatal(err)
		}
		if b.RoleRef.Name != name || len(b.Subjects) != 1 || b.Subjects[0].Kind != "ServiceAccount" || b.Subjects[0].Name != name || b.Subjects[0].Namespace != namespace {
			t.Errorf("ClusterRoleBinding %s: %+v %+v", name, b.RoleRef, b.Subjects)
		}
	}
	le := &rbacv1.Role{}
	if err := c.client.Get(ctx, client.ObjectKey{Namespace: namespace, Name: "routemode-operator-leader-election"}, le); err != nil {
		t.Fatal(err)
	}
	// Nothing in the operator's roles grants secrets, pods or wildcards.
	op := &rbacv1.ClusterRole{}
	if err := c.client.Get(ctx, client.ObjectKey{Name: "routemode-operator"}, op); err != nil {
		t.Fatal(err)
	}
	for _, r := range append(append(op.Rules, le.Rules...), agent.Rules...) {
		for _, s := range append(append(r.Resources, r.Verbs...), r.APIGroups...) {
			if s == "*" || s == "secrets" || s == "pods" || s == "escalate" || s == "bind" || s == "impersonate" {
				t.Errorf("rule %+v grants %q", r, s)
			}
		}
	}
}
