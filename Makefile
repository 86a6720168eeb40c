# routemode: switch a cluster between VXLAN tunnelling and native routing,
# and between legacy and eBPF host routing, live.

SHELL := /usr/bin/env bash -o pipefail
.SHELLFLAGS := -ec

GO ?= go
BIN := $(CURDIR)/bin
K8S_BIN := $(BIN)/k8s
# The Kubernetes version the tests run against; hack/envtest/go.mod pins the same.
K8S_VERSION := v1.37.2
ENVTEST_LDFLAGS := -X k8s.io/component-base/version.gitVersion=$(K8S_VERSION) \
	-X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=37 \
	-X k8s.io/client-go/pkg/version.gitVersion=$(K8S_VERSION) \
	-X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=37
CONTROLLER_GEN := $(GO) tool controller-gen
TEST_TIMEOUT ?= 40m

.DEFAULT_GOAL := help

##@ General

.PHONY: help
help: ## Show this help.
	@awk 'BEGIN {FS = ":.*##"; printf "Usage: make <target>\n"} /^[a-zA-Z_0-9-]+:.*?##/ { printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2 } /^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) }' $(MAKEFILE_LIST)

##@ Development

.PHONY: generate
generate: ## Generate DeepCopy methods for the API types.
	$(CONTROLLER_GEN) object:headerFile=hack/boilerplate.go.txt paths=./api/...

.PHONY: manifests
manifests: ## Generate the CRDs and the operator's and agent's RBAC from markers.
	$(CONTROLLER_GEN) crd paths=./api/... output:crd:artifacts:config=config/crd/bases
	# The Helm chart installs the same CRDs from crds/, which Helm cannot
	# read outside the chart; config's TestChartMatchesConfigDefault also
	# holds the chart's RBAC to config/rbac's generated roles.
	cp config/crd/bases/*.yaml charts/routemode/crds/
	$(CONTROLLER_GEN) rbac:roleName=routemode-operator paths=./controllers/... output:rbac:artifacts:config=config/rbac/operator
	$(CONTROLLER_GEN) rbac:roleName=routemode-agent paths=./agent/... output:rbac:artifacts:config=config/rbac/agent

.PHONY: generate-bpf
generate-bpf: ## Compile the eBPF programs with clang (installs Debian's clang if missing).
	hack/bpf/generate.sh

.PHONY: fmt
fmt: ## Format the Go code.
	$(GO) fmt ./...

.PHONY: lint
lint: ## Run go vet and staticcheck.
	$(GO) vet ./...
	$(GO) tool staticcheck ./...

.PHONY: verify
verify: ## Check that generated code, CRDs, RBAC and eBPF objects are up to date.
	hack/verify.sh

##@ Build

.PHONY: build
build: ## Build the operator, agent, CNI plugin and CLI into bin/.
	$(GO) build -o $(BIN)/ ./cmd/...

IMAGE_TAG ?= v0.1.0
IMAGE_REGISTRY ?= ghcr.io/routemode

.PHONY: images
images: ## Build the operator and agent images as archives in bin/images, without a container engine.
	$(GO) run ./hack/images build -dir $(BIN)/images -registry $(IMAGE_REGISTRY) -tag $(IMAGE_TAG)

.PHONY: push
push: registry-set images ## Push the images to REGISTRY (e.g. make push REGISTRY=registry.example.com/routemode).
	$(GO) run ./hack/images push -dir $(BIN)/images -registry $(REGISTRY) -tag $(IMAGE_TAG)

.PHONY: registry-set
registry-set:
	@test -n "$(REGISTRY)" || { echo "make push needs REGISTRY=host[/path], the registry to push routemode-operator and routemode-agent to" >&2; exit 2; }

.PHONY: envtest-bin
envtest-bin: $(K8S_BIN)/kube-apiserver $(K8S_BIN)/etcd $(K8S_BIN)/kubectl ## Build kube-apiserver, etcd and kubectl from source into bin/k8s (first build about 15 minutes).

# Built only when missing: the first build takes minutes, and the binaries
# do not change while hack/envtest/go.mod does not.
$(K8S_BIN)/kube-apiserver $(K8S_BIN)/kubectl:
	cd hack/envtest && $(GO) build -ldflags '$(ENVTEST_LDFLAGS)' -o $@ k8s.io/kubernetes/cmd/$(@F)

$(K8S_BIN)/etcd:
	cd hack/envtest && $(GO) build -o $@ go.etcd.io/etcd/server/v3

NODE_BIN := $(BIN)/node
# The pause image's tag: Kubernetes' build/pause/Makefile TAG for $(K8S_VERSION).
PAUSE_IMAGE := registry.k8s.io/pause:3.10.2
NODE_K8S := kubelet kube-proxy kube-scheduler kube-controller-manager
NODE_CONTAINERD := containerd ctr containerd-shim-runc-v2

.PHONY: node-bin
node-bin: $(addprefix $(NODE_BIN)/,$(NODE_K8S) $(NODE_CONTAINERD)) $(NODE_BIN)/images/pause.tar node-deps ## Build the real nodes' kubelet, kube-proxy, scheduler, controller-manager, containerd and pause image into bin/node (first build about 20 minutes).

# Built only when missing, like envtest-bin; from hack/envtest's module, so
# every Kubernetes binary of the lab is the same release.
$(addprefix $(NODE_BIN)/,$(NODE_K8S)):
	cd hack/envtest && $(GO) build -ldflags '$(ENVTEST_LDFLAGS)' -o $@ k8s.io/kubernetes/cmd/$(@F)

# Static, so the binary runs whatever libc the node has; no_btrfs because
# the lab's nodes use the overlayfs snapshotter and the btrfs one needs cgo.
$(NODE_BIN)/containerd $(NODE_BIN)/ctr:
	cd hack/containerd && CGO_ENABLED=0 $(GO) build -tags 'urfave_cli_no_docs no_btrfs' -o $@ github.com/containerd/containerd/v2/cmd/$(@F)

$(NODE_BIN)/containerd-shim-runc-v2:
	cd hack/containerd && CGO_ENABLED=0 $(GO) build -tags 'urfave_cli_no_docs no_grpc' -o $@ github.com/containerd/containerd/v2/cmd/$(@F)

# The pause image: Kubernetes' own pause.c from the module cache, built as
# its Makefile builds it, written as an image archive without an engine.
$(NODE_BIN)/images/pause.tar:
	mkdir -p $(NODE_BIN)
	src=$$(cd hack/envtest && $(GO) mod download -json k8s.io/kubernetes | sed -n 's/^\t"Dir": "\(.*\)",$$/\1/p'); \
	gcc -Os -Wall -Werror -static -DVERSION=v$(lastword $(subst :, ,$(PAUSE_IMAGE))) -o $(NODE_BIN)/pause $$src/build/pause/linux/pause.c
	$(GO) run ./hack/images single -bin $(NODE_BIN)/pause -path /pause -ref $(PAUSE_IMAGE) -out $@

# runc runs the containers and kube-proxy's nftables mode drives nft:
# Debian's packages, installed when missing.
.PHONY: node-deps
node-deps:
	@command -v runc >/dev/null && command -v nft >/dev/null || { apt-get update -qq && apt-get install -y -qq runc nftables; }

##@ Test

.PHONY: test
test: envtest-bin node-bin ## Run every test: units, the API server tests, the kernel tests and the real-node end to end (as root).
	KUBEBUILDER_ASSETS=$(K8S_BIN) $(GO) test -count=1 -timeout $(TEST_TIMEOUT) ./...

.PHONY: chaos
chaos: envtest-bin ## Run the chaos suite in the lab (faults during a live switch; control plane frozen 60s) and print its table for docs/reliability.md.
	rm -f $(BIN)/chaos-table.md
	KUBEBUILDER_ASSETS=$(K8S_BIN) CHAOS_TABLE=$(BIN)/chaos-table.md CHAOS_FREEZE=60s CHAOS_FULL=1 $(GO) test -count=1 -timeout $(TEST_TIMEOUT) -run '^TestChaos' -v ./hack/lab/
	@echo; echo "| fault | when | probes sent | lost | lost outside the faulty node | TCP resets | rollout | fault to Ready |"; \
	echo "|---|---|---|---|---|---|---|---|"; cat $(BIN)/chaos-table.md

.PHONY: test-realnodes
test-realnodes: envtest-bin node-bin ## Run only the end-to-end test on real nodes (containerd, kubelet, kube-proxy; root; part of make test).
	$(GO) test -count=1 -v -timeout $(TEST_TIMEOUT) ./hack/lab/realnodes

.PHONY: bench-datapath
bench-datapath: ## Benchmark cross-node pod traffic: baseline, legacy, legacy+netfilter, bpf, tunnel (root).
	hack/bpf/bench.sh

.PHONY: bench-monitor
bench-monitor: ## Benchmark what the monitor costs the programs per packet: before the monitor, flag off, flag on (root).
	cd bpf && $(GO) test -run '^$$' -bench MonitorCost -benchtime 30x .

.PHONY: bench-scale
bench-scale: envtest-bin ## Benchmark the control plane at 100 and 1,000 nodes (SCALE_NODES=100,1000,5000; SCALE_DESIGNS=new skips the design before issue 15): real API server, operator process, simulated agents.
	cd test/scale && KUBEBUILDER_ASSETS=$(K8S_BIN) $(GO) test -run '^$$' -bench Rollout -benchtime 1x -timeout 120m .

.PHONY: bench-agent
bench-agent: ## Benchmark one node's agent with 5,000 peers (AGENT_PEERS=N) in network namespaces: converging against raw netlink, and the health gate's full sweep (root).
	cd test/scale && $(GO) test -run '^$$' -bench 'AgentConverge|HealthSweep' -benchtime 3x -timeout 30m .

##@ Lab

.PHONY: lab-up
lab-up: envtest-bin build ## Start the lab: an API server and 3 nodes as network namespaces.
	$(BIN)/routemode-lab up

.PHONY: lab-up-real
lab-up-real: envtest-bin node-bin build images ## Start the lab with real nodes: containerd, kubelet and kube-proxy per node, routemode from config/default.
	$(BIN)/routemode-lab up --real-nodes --node-bin $(NODE_BIN)

.PHONY: lab-load
lab-load: build ## Import image archives into every real node of the running lab: make lab-load IMAGES="a.tar b.tar".
	@test -n "$(IMAGES)" || { echo "make lab-load needs IMAGES=\"FILE...\", the image archives to import" >&2; exit 2; }
	$(BIN)/routemode-lab load $(IMAGES)

.PHONY: lab-down
lab-down: ## Remove everything the lab made.
	$(GO) run ./cmd/routemode-lab down

# DEMO_FLAGS passes routemode-lab demo's flags, e.g. -prefix rd- for a
# second lab next to one with the plain node names.
.PHONY: demo
demo: envtest-bin node-bin build images ## Start the lab with real nodes and switch it live from VXLAN to native routing with eBPF host routing and back.
	$(BIN)/routemode-lab demo $(DEMO_FLAGS)
