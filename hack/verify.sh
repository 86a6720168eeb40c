#!/usr/bin/env bash
# Fails when generated files are stale: DeepCopy code, CRDs, RBAC, and the
# committed eBPF objects. Run `make generate manifests generate-bpf` to fix.
set -euo pipefail
cd "$(dirname "$0")/.."

make -s generate manifests
if ! git diff --exit-code -- api config/crd config/rbac charts/routemode/crds; then
	echo "generated code, CRDs or RBAC are out of date: run 'make generate manifests' and commit the result" >&2
	exit 1
fi
if untracked=$(git ls-files --others --exclude-standard -- api config/crd config/rbac charts/routemode/crds) && [ -n "$untracked" ]; then
	echo "generators produced files that are not committed: $untracked" >&2
	exit 1
fi
hack/bpf/verify.sh
echo "generated files are up to date"
