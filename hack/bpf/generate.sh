#!/usr/bin/env bash
# Regenerates the committed bpf2go output (bpf/**/*_bpfel.go, *_bpfel.o)
# from the C sources under bpf/. Wired to `make generate-bpf`.
#
# The output is only reproducible with one clang: Debian 12's clang 14,
# the pinned compiler. Another version produces different (valid) objects
# that hack/bpf/verify.sh would report as drift.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CLANG_MAJOR=14

ensure_tools() {
	local missing=()
	command -v clang >/dev/null || missing+=(clang)
	command -v llvm-strip >/dev/null || missing+=(llvm)
	if ((${#missing[@]})); then
		if [[ $(id -u) -ne 0 ]]; then
			echo "generate-bpf: missing ${missing[*]}; install Debian's clang and llvm packages" >&2
			exit 1
		fi
		echo "generate-bpf: installing ${missing[*]}" >&2
		apt-get update -qq
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clang llvm >/dev/null
	fi
	local v
	v="$(clang -dumpversion)"
	if [[ ${v%%.*} != "$CLANG_MAJOR" ]]; then
		echo "generate-bpf: warning: clang $v is not the pinned clang $CLANG_MAJOR; output will differ from the committed objects" >&2
	fi
}

ensure_tools
cd "$ROOT"
go generate ./bpf/...
