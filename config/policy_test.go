package config_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/routemode/routemode/api/v1alpha1"
)

const (
	agentUser    = "system:serviceaccount:routemode-system:routemode-agent"
	operatorUser = "system:serviceaccount:routemode-system:routemode-operator"
	nodeClaim    = "authentication.kubernetes.io/node-name"
	policyName   = "routemode-agent-own-routingnode"
	// settle bounds how long RBAC and admission policy changes take to
	// reach the API server's authorizer and admission plugin.
	settle = 30 * time.Second
)

var saGroups = []string{"system:serviceaccounts", "system:serviceaccounts:routemode-system", "system:authenticated"}

// as is a client acting as user, through impersonation by envtest's admin.
// Impersonated requests carry the extra user info into admission, as a
// pod-bound service-account token's node claim would.
func as(t *testing.T, base *rest.Config, user string, extra map[string][]string) client.Client {
	t.Helper()
	cfg := rest.CopyConfig(base)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: user, Groups: saGroups, Extra: extra}
	c, err := client.New(cfg, client.Options{Scheme: scheme()})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func agentOn(t *testing.T, base *rest.Config, node string) client.Client {
	return as(t, base, agentUser, map[string][]string{nodeClaim: {node}})
}

func routingNode(name string) *v1alpha1.RoutingNode {
	return &v1alpha1.RoutingNode{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec:       v1alpha1.RoutingNodeSpec{NodeName: name, Step: v1alpha1.StepPending},
	}
}

// patchStatus sets status.nodeIP of RoutingNode name as c, with a JSON merge
// patch on the status subresource, as an agent reports.
func patchStatus(ctx context.Context, c client.Client, name, nodeIP string) error {
	rn := routingNode(name)
	patch := fmt.Appendf(nil, `{"status":{"nodeIP":%q}}`, nodeIP)
	return c.Status().Patch(ctx, rn, client.RawPatch("application/merge-patch+json", patch))
}

func denied(err error, want string) error {
	if err == nil {
		return errors.New("allowed")
	}
	if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), want) {
		return fmt.Errorf("refused with %v, want Forbidden with %q", err, want)
	}
	return nil
}

func otherNodeMessage(agentNode, target string) string {
	return fmt.Sprintf("routemode-agent on node %s may only write RoutingNode %s's status, not RoutingNode %s's", agentNode, agentNode, target)
}

func TestAgentWritesOnlyItsOwnRoutingNodeStatus(t *testing.T) {
	cl := installed(t)
	ctx := context.Background()
	admin := cl.client
	for _, n := range []string{"node-1", "node-2"} {
		if err := admin.Create(ctx, routingNode(n)); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
	}
	agent1 := agentOn(t, cl.cfg, "node-1")

	// RBAC and the policy were just installed: wait until both are in force.
	eventually(t, settle, "agent on node-1 writes node-1's status", func(ctx context.Context) error {
		return patchStatus(ctx, agent1, "node-1", "192.0.2.1")
	})
	eventually(t, settle, "policy refuses node-1's agent writing node-2's status", func(ctx context.Context) error {
		return denied(patchStatus(ctx, agent1, "node-2", "192.0.2.99"), otherNodeMessage("node-1", "node-2"))
	})

	t.Run("own status", func(t *testing.T) {
		if err := patchStatus(ctx, agent1, "node-1", "192.0.2.11"); err != nil {
			t.Fatal(err)
		}
		// A full status update (PUT) too, as the agent's Status().Update does.
		rn := &v1alpha1.RoutingNode{}
		if err := agent1.Get(ctx, client.ObjectKey{Name: "node-1"}, rn); err != nil {
			t.Fatal(err)
		}
		rn.Status.PodCIDR = "10.0.1.0/24"
		rn.Status.Conditions = []metav1.Condition{{Type: v1alpha1.ConditionDatapathApplied, Status: metav1.ConditionTrue, Reason: "Applied", Message: "kernel matches spec", LastTransitionTime: metav1.Now()}}
		if err := agent1.Status().Update(ctx, rn); err != nil {
			t.Fatal(err)
		}
		got := &v1alpha1.RoutingNode{}
		if err := admin.Get(ctx, client.ObjectKey{Name: "node-1"}, got); err != nil {
			t.Fatal(err)
		}
		if got.Status.NodeIP != "192.0.2.11" || got.Status.PodCIDR != "10.0.1.0/24" || len(got.Status.Conditions) != 1 {
			t.Errorf("node-1 status %+v", got.Status)
		}
	})

	t.Run("another node's status", func(t *testing.T) {
		before := &v1alpha1.RoutingNode{}
		if err := admin.Get(ctx, client.ObjectKey{Name: "node-2"}, before); err != nil {
			t.Fatal(err)
		}
		err := patchStatus(ctx, agent1, "node-2", "192.0.2.99")
		if e := denied(err, otherNodeMessage("node-1", "node-2")); e != nil {
			t.Errorf("patch: %v", e)
		}
		t.Logf("refused: %v", err)
		// PUT as well.
		rn := before.DeepCopy()
		rn.Status.NodeIP = "192.0.2.99"
		if e := denied(agent1.Status().Update(ctx, rn), otherNodeMessage("node-1", "node-2")); e != nil {
			t.Errorf("update: %v", e)
		}
		after := &v1alpha1.RoutingNode{}
		if err := admin.Get(ctx, client.ObjectKey{Name: "node-2"}, after); err != nil {
			t.Fatal(err)
		}
		if after.Status.NodeIP != before.Status.NodeIP || after.ResourceVersion != before.ResourceVersion {
			t.Errorf("node-2 changed: status %+v, resourceVersion %s -> %s", after.Status, before.ResourceVersion, after.ResourceVersion)
		}
	})

	t.Run("no node claim", func(t *testing.T) {
		noClaim := as(t, cl.cfg, agentUser, nil)
		err := patchStatus(ctx, noClaim, "node-1", "192.0.2.12")
		if e := denied(err, "routemode-agent may only write its own node's RoutingNode status, but its credentials carry no node claim"); e != nil {
			t.Error(e)
		}
		t.Logf("refused: %v", err)
		// Two claims are no claim either.
		twoClaims := as(t, cl.cfg, agentUser, map[string][]string{nodeClaim: {"node-1", "node-2"}})
		if e := denied(patchStatus(ctx, twoClaims, "node-1", "192.0.2.12"), "carry no node claim"); e != nil {
			t.Error(e)
		}
	})

	t.Run("spec is RBAC forbidden", func(t *testing.T) {
		rn := routingNode("node-1")
		err := agent1.Patch(ctx, rn, client.RawPatch("application/merge-patch+json", []byte(`{"spec":{"step":"Steady"}}`)))
		if e := denied(err, `cannot patch resource "routingnodes" in API group "routemode.io"`); e != nil {
			t.Error(e)
		}
		if e := denied(agent1.Create(ctx, routingNode("node-3")), `cannot create resource "routingnodes"`); e != nil {
			t.Error(e)
		}
		if e := denied(agent1.Delete(ctx, routingNode("node-2")), `cannot delete resource "routingnodes"`); e != nil {
			t.Error(e)
		}
		// A spec inside a status write is dropped by the status subresource.
		patch := []byte(`{"spec":{"step":"Steady"},"status":{"nodeIP":"192.0.2.13"}}`)
		if err := agent1.Status().Patch(ctx, routingNode("node-1"), client.RawPatch("application/merge-patch+json", patch)); err != nil {
			t.Fatal(err)
		}
		got := &v1alpha1.RoutingNode{}
		if err := admin.Get(ctx, client.ObjectKey{Name: "node-1"}, got); err != nil {
			t.Fatal(err)
		}
		if got.Spec.Step != v1alpha1.StepPending || got.Status.NodeIP != "192.0.2.13" {
			t.Errorf("after a status patch carrying a spec: step %s, nodeIP %s", got.Spec.Step, got.Status.NodeIP)
		}
	})

	t.Run("agent reads what it needs and nothing else", func(t *testing.T) {
		if err := agent1.List(ctx, &corev1.NodeList{}); err != nil {
			t.Errorf("list nodes: %v", err)
		}
		if err := agent1.List(ctx, &v1alpha1.RoutingNodeList{}); err != nil {
			t.Errorf("list routingnodes: %v", err)
		}
		if e := denied(agent1.List(ctx, &v1alpha1.RoutingModeList{}), `cannot list resource "routingmodes"`); e != nil {
			t.Error(e)
		}
		if e := denied(agent1.List(ctx, &corev1.SecretList{}, client.InNamespace(namespace)), `cannot list resource "secrets"`); e != nil {
			t.Error(e)
		}
	})

	t.Run("operator is not affected", func(t *testing.T) {
		op := as(t, cl.cfg, operatorUser, nil)
		patch := []byte(`{"spec":{"step":"Prepare","targetGeneration":1}}`)
		if err := op.Patch(ctx, routingNode("node-2"), client.RawPatch("application/merge-patch+json", patch)); err != nil {
			t.Errorf("operator patches node-2's spec: %v", err)
		}
		rm := &v1alpha1.RoutingMode{ObjectMeta: metav1.ObjectMeta{Name: v1alpha1.RoutingModeName}, Spec: v1alpha1.RoutingModeSpec{Tunnel: v1alpha1.TunnelVXLAN}}
		if err := admin.Create(ctx, rm); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = admin.Delete(context.Background(), rm) })
		if err := op.Status().Patch(ctx, rm, client.RawPatch("application/merge-patch+json", []byte(`{"status":{"phase":"Preflight"}}`))); err != nil {
			t.Errorf("operator patches the RoutingMode status: %v", err)
		}
		if e := denied(op.List(ctx, &corev1.SecretList{}, client.InNamespace(namespace)), `cannot list resource "secrets"`); e != nil {
			t.Error(e)
		}
	})

	t.Run("spec refused by the policy even if RBAC allowed it", func(t *testing.T) {
		// Widen the agent's RBAC by mistake: the policy still holds.
		wide := &rbacv1.ClusterRole{
			ObjectMeta: metav1.ObjectMeta{Name: "test-too-wide-agent"},
			Rules:      []rbacv1.PolicyRule{{APIGroups: []string{"routemode.io"}, Resources: []string{"routingnodes"}, Verbs: []string{"create", "update", "patch", "delete"}}},
		}
		binding := &rbacv1.ClusterRoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: "test-too-wide-agent"},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: wide.Name},
			Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: "routemode-agent", Namespace: namespace}},
		}
		for _, o := range []client.Object{wide, binding} {
			if err := admin.Create(ctx, o); err != nil {
				t.Fatal(err)
			}
		}
		t.Cleanup(func() {
			_ = admin.Delete(context.Background(), binding)
			_ = admin.Delete(context.Background(), wide)
		})
		const msg = "routemode-agent may only write the status of RoutingNodes"
		eventually(t, settle, "policy refuses a spec patch that RBAC now allows", func(ctx context.Context) error {
			err := agent1.Patch(ctx, routingNode("node-1"), client.RawPatch("application/merge-patch+json", []byte(`{"spec":{"step":"Steady"}}`)))
			return denied(err, msg+"; creating, deleting or changing the spec or metadata of RoutingNode node-1 is the operator's job (refused UPDATE)")
		})
		if e := denied(agent1.Create(ctx, routingNode("node-3")), msg); e != nil {
			t.Error(e)
		}
		if e := denied(agent1.Delete(ctx, routingNode("node-2")), "(refused DELETE)"); e != nil {
			t.Error(e)
		}
		got := &v1alpha1.RoutingNode{}
		if err := admin.Get(ctx, client.ObjectKey{Name: "node-1"}, got); err != nil {
			t.Fatal(err)
		}
		if got.Spec.Step != v1alpha1.StepPending {
			t.Errorf("node-1 spec.step %s, want unchanged Pending", got.Spec.Step)
		}
	})

	// Run last: it takes the policy away for a while.
	t.Run("the policy is what enforces it", func(t *testing.T) {
		// Without the binding, RBAC alone lets node-1's agent write
		// node-2's status: it cannot name "your own node".
		b := &admissionv1.ValidatingAdmissionPolicyBinding{}
		if err := admin.Get(ctx, client.ObjectKey{Name: policyName}, b); err != nil {
			t.Fatal(err)
		}
		if err := admin.Delete(ctx, b); err != nil {
			t.Fatal(err)
		}
		// Restored with config/default, so that the installation is again
		// exactly what `kubectl apply -k config/default` made.
		restored := false
		t.Cleanup(func() {
			if !restored {
				_, _, _ = cl.kubectl("apply", "-k", "config/default")
			}
		})
		eventually(t, settle, "without the binding, node-1's agent writes node-2's status", func(ctx context.Context) error {
			return patchStatus(ctx, agent1, "node-2", "192.0.2.98")
		})

		out, stderr, err := cl.kubectl("apply", "-k", "config/default")
		if err != nil {
			t.Fatalf("kubectl apply -k config/default: %v\n%s%s", err, out, stderr)
		}
		if !strings.Contains(out, "validatingadmissionpolicybinding.admissionregistration.k8s.io/"+policyName+" created") {
			t.Errorf("kubectl apply -k config/default did not recreate the binding:\n%s", out)
		}
		restored = true
		eventually(t, settle, "with the binding back, the write is refused again", func(ctx context.Context) error {
			return denied(patchStatus(ctx, agent1, "node-2", "192.0.2.97"), otherNodeMessage("node-1", "node-2"))
		})
	})
}
