#!/usr/bin/env bash
# Fails when the committed bpf2go output differs from a fresh build of the
# C sources: somebody edited a program under bpf/ without regenerating, or the
# generator changed. Generates into a temporary copy, so the work tree is
# never touched.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

mkdir -p "$TMP/hack"
cp "$ROOT/go.mod" "$ROOT/go.sum" "$TMP/"
cp -r "$ROOT/bpf" "$TMP/bpf"
cp -r "$ROOT/hack/bpf" "$TMP/hack/bpf"
(cd "$TMP" && bash hack/bpf/generate.sh)

# Every package under bpf/ (the programs and the benchmark's prototype).
generated() { (cd "$1" && find bpf -name '*_bpfel.go' -o -name '*_bpfel.o' | sort); }

status=0
for rel in $(generated "$ROOT"); do
	if ! cmp -s "$ROOT/$rel" "$TMP/$rel"; then
		echo "verify-bpf: $rel differs from a fresh build; run hack/bpf/generate.sh and commit the result" >&2
		status=1
	fi
done
for rel in $(generated "$TMP"); do
	if [[ ! -e "$ROOT/$rel" ]]; then
		echo "verify-bpf: $rel is generated but not committed" >&2
		status=1
	fi
done
if ((status == 0)); then
	echo "verify-bpf: committed BPF objects match the sources"
fi
exit $status
