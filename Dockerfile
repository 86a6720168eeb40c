# syntax=docker/dockerfile:1
#
# routemode's container images, one target each:
#
#   docker build --target operator -t ghcr.io/routemode/routemode-operator:v0.1.0 .
#   docker build --target agent    -t ghcr.io/routemode/routemode-agent:v0.1.0 .
#
# The agent image also carries the CNI plugin, routemode-cni, which the agent
# DaemonSet's init container copies into the host's /opt/cni/bin with
# cni-install, and routemodectl, for `kubectl exec ds/routemode-agent --
# routemodectl bpf ...` (it reads the node's pinned eBPF maps). Every binary is static (CGO_ENABLED=0); the eBPF objects are
# committed bpf2go output embedded in the agent, so no clang is needed here.
# Multi-platform: docker buildx build --platform linux/amd64,linux/arm64 ...

FROM --platform=$BUILDPLATFORM golang:1.26 AS build
WORKDIR /src
ENV CGO_ENABLED=0 GOFLAGS=-buildvcs=false
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
ARG TARGETOS=linux TARGETARCH
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    GOOS=$TARGETOS GOARCH=$TARGETARCH go build -trimpath -ldflags='-s -w' -o /out/ \
        ./cmd/routemode-operator \
        ./cmd/routemode-agent \
        ./cmd/routemode-cni \
        ./cmd/routemodectl \
        ./build/cni-install

# The operator only talks to the API server: no shell, no root.
FROM gcr.io/distroless/static-debian12:nonroot AS operator
COPY --from=build /out/routemode-operator /usr/local/bin/routemode-operator
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/routemode-operator"]

# The agent runs as root with NET_ADMIN, BPF, PERFMON and SYS_ADMIN on the
# host network (see config/agent/daemonset.yaml); the image needs nothing but
# its binaries.
FROM gcr.io/distroless/static-debian12 AS agent
COPY --from=build /out/routemode-agent /out/cni-install /out/routemodectl /usr/local/bin/
COPY --from=build /out/routemode-cni /opt/routemode/cni/routemode-cni
USER 0:0
ENTRYPOINT ["/usr/local/bin/routemode-agent"]
