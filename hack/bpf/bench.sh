#!/usr/bin/env bash
# Datapath benchmark: pod-to-pod TCP request/response rate (blocking, and
# busy-polling sockets), 64-byte UDP packet rate (one datagram per system
# call, and 64 per sendmmsg/recvmmsg) and TCP bulk throughput across two
# namespace "nodes", for node-to-node traffic, legacy host routing (no
# rules, kube-proxy's ruleset for 1,000 services with conntrack, and the
# same rules walked per packet), eBPF host routing (with the agent's direct
# routes, with a FIB lookup per packet, and the hand-built prototype
# rebuilt, bpf/prototype: see docs/host-routing.md) and VXLAN. Wired to
# `make bench-datapath`. Needs root.
#
# Numbers are only meaningful on an otherwise idle machine: the script
# prints the load average before and after; rerun if it was high.
#
#   ROUNDS=30 DURATION=150ms WARMUP=30ms SERVICES=1000 hack/bpf/bench.sh
#   PATHS=legacy,bpf TESTS=tcp_rr_poll,udp64_batch hack/bpf/bench.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

if [[ $(id -u) -ne 0 ]]; then
	echo "bench-datapath: needs root (network namespaces, BPF)" >&2
	exit 1
fi

echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) CPUs, kernel $(uname -r)"
go test -run '^$' -bench '^BenchmarkDatapath$' -benchtime 1x -timeout 30m \
	./agent/hostrouting/bench/ -args \
	-datapath.rounds="${ROUNDS:-30}" \
	-datapath.duration="${DURATION:-150ms}" \
	-datapath.warmup="${WARMUP:-30ms}" \
	-datapath.services="${SERVICES:-1000}" \
	-datapath.paths="${PATHS:-}" \
	-datapath.tests="${TESTS:-}"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
