#!/usr/bin/env bash
# Refreshes the libbpf headers vendored in bpf/include/bpf from Debian's
# libbpf-dev, the pinned version below. The programs only need these three
# headers; everything else they use is declared in bpf/include/rm_uapi.h.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
LIBBPF_VERSION="1:1.1.2-0+deb12u1"

if ! dpkg-query -W -f='${Version}' libbpf-dev 2>/dev/null | grep -qxF "$LIBBPF_VERSION"; then
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "libbpf-dev=$LIBBPF_VERSION" >/dev/null
fi
for h in bpf_helpers.h bpf_helper_defs.h bpf_endian.h; do
	install -m 0644 "/usr/include/bpf/$h" "$ROOT/bpf/include/bpf/$h"
done
echo "vendored libbpf $LIBBPF_VERSION headers into bpf/include/bpf"
