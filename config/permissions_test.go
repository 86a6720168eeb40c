package config_test

import (
	"context"
	"flag"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	authorizationv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// updatePermissions rewrites the expectation instead of comparing with it:
// go test ./config -run TestServiceAccountPermissions -update-permissions,
// then review the diff as a change of what routemode may do in a cluster.
var updatePermissions = flag.Bool("update-permissions", false, "rewrite config/testdata/permissions.txt from the API server's answer")

// permissionsFile is what each service account may do once
// `kubectl apply -k config/default` ran, one line per resource.
var permissionsFile = filepath.Join("testdata", "permissions.txt")

// TestServiceAccountPermissions asks the real API server, with config/rbac
// applied, what the operator's and the agent's service accounts may do
// (SelfSubjectRulesReview as each of them, the answer behind `kubectl auth
// can-i --list`) and compares it with testdata/permissions.txt. A role
// widened by a marker, a hand edit or a new binding fails here, where the
// reviewer sees exactly which verbs on which resources were added.
//
// The routemode namespace and one other are asked: the leader-election
// Role must not reach beyond routemode-system.
func TestServiceAccountPermissions(t *testing.T) {
	c := installed(t)
	ctx := context.Background()
	var lines []string
	for _, ns := range []string{namespace, "default"} {
		// What every service account may do (discovery, self reviews)
		// comes with Kubernetes, not with config/rbac: a service account
		// without bindings of its own shows it, and it is left out.
		baseline, err := rulesOf(ctx, c.cfg, "system:serviceaccount:"+namespace+":unbound", ns)
		if err != nil {
			t.Fatalf("rules of an unbound service account in namespace %s: %v", ns, err)
		}
		for _, sa := range []string{"routemode-operator", "routemode-agent"} {
			got, err := rulesOf(ctx, c.cfg, "system:serviceaccount:"+namespace+":"+sa, ns)
			if err != nil {
				t.Fatalf("rules of %s in namespace %s: %v", sa, ns, err)
			}
			for _, l := range got {
				if !slices.Contains(baseline, l) {
					lines = append(lines, sa+" "+ns+" "+l)
				}
			}
		}
	}
	got := "# What routemode's service accounts may do with config/default applied, beyond\n" +
		"# what every service account may: <account> <namespace> <verbs> <resource or URL>,\n" +
		"# as SelfSubjectRulesReview reports it.\n" +
		"# Checked by TestServiceAccountPermissions; regenerate with -update-permissions.\n" +
		strings.Join(lines, "\n") + "\n"
	if *updatePermissions {
		if err := os.WriteFile(permissionsFile, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(permissionsFile)
	if err != nil {
		t.Fatalf("reading the expectation: %v", err)
	}
	if got != string(want) {
		t.Errorf("service account permissions differ from %s (lines with - are expected, + are granted):\n%s",
			permissionsFile, lineDiff(string(want), got))
	}
}

// rulesOf lists what user may do in ns, each resource with its verbs
// merged across the rules that grant them, sorted so the listing is stable.
func rulesOf(ctx context.Context, cfg *rest.Config, user, ns string) ([]string, error) {
	imp := rest.CopyConfig(cfg)
	imp.Impersonate = rest.ImpersonationConfig{UserName: user, Groups: saGroups}
	cs, err := kubernetes.NewForConfig(imp)
	if err != nil {
		return nil, err
	}
	review, err := cs.AuthorizationV1().SelfSubjectRulesReviews().Create(ctx,
		&authorizationv1.SelfSubjectRulesReview{Spec: authorizationv1.SelfSubjectRulesReviewSpec{Namespace: ns}}, metav1.CreateOptions{})
	if err != nil {
		return nil, err
	}
	if review.Status.Incomplete {
		return nil, fmt.Errorf("the API server's answer is incomplete: %s", review.Status.EvaluationError)
	}
	verbs := map[string]sets.Set[string]{}
	add := func(key string, vs []string) {
		if verbs[key] == nil {
			verbs[key] = sets.New[string]()
		}
		verbs[key].Insert(vs...)
	}
	for _, r := range review.Status.ResourceRules {
		names := strings.Join(r.ResourceNames, ",")
		for _, g := range r.APIGroups {
			for _, res := range r.Resources {
				key := res
				if g != "" {
					key = res + "." + g
				}
				if names != "" {
					key += " names=" + names
				}
				add(key, r.Verbs)
			}
		}
	}
	for _, r := range review.Status.NonResourceRules {
		for _, u := range r.NonResourceURLs {
			add("url "+u, r.Verbs)
		}
	}
	var out []string
	for _, key := range slices.Sorted(maps.Keys(verbs)) {
		out = append(out, strings.Join(sets.List(verbs[key]), ",")+" "+key)
	}
	return out, nil
}

// lineDiff marks the lines only in want with - and only in got with +.
func lineDiff(want, got string) string {
	w, g := sets.New(strings.Split(want, "\n")...), sets.New(strings.Split(got, "\n")...)
	var b strings.Builder
	for _, l := range sets.List(w.Difference(g)) {
		fmt.Fprintf(&b, "- %s\n", l)
	}
	for _, l := range sets.List(g.Difference(w)) {
		fmt.Fprintf(&b, "+ %s\n", l)
	}
	return b.String()
}
