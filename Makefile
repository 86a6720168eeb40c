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

##@ Test

.PHONY: test
test: envtest-bin ## Run every test: units, the API server tests, and the kernel tests (as root).
	KUBEBUILDER_ASSETS=$(K8S_BIN) $(GO) test -count=1 -timeout $(TEST_TIMEOUT) ./...

.PHONY: chaos
chaos: envtest-bin ## Run the chaos suite in the lab (faults during a live switch; control plane frozen 60s) and print its table for docs/reliability.md.
	rm -f $(BIN)/chaos-table.md
	KUBEBUILDER_ASSETS=$(K8S_BIN) CHAOS_TABLE=$(BIN)/chaos-table.md CHAOS_FREEZE=60s $(GO) test -count=1 -timeout $(TEST_TIMEOUT) -run '^TestChaos' -v ./hack/lab/
	@echo; echo "| fault | when | probes sent | lost | lost outside the faulty node | TCP resets | rollout | fault to Ready |"; \
	echo "|---|---|---|---|---|---|---|---|"; cat $(BIN)/chaos-table.md

.PHONY: bench-datapath
bench-datapath: ## Benchmark cross-node pod traffic: baseline, legacy, legacy+netfilter, bpf, tunnel (root).
	hack/bpf/bench.sh

.PHONY: bench-scale
bench-scale: envtest-bin ## Benchmark the control plane at 100 and 1,000 nodes (SCALE_NODES=100,1000,5000; SCALE_DESIGNS=new skips the merge base's design): real API server, operator process, simulated agents.
	cd test/scale && KUBEBUILDER_ASSETS=$(K8S_BIN) $(GO) test -run '^$$' -bench . -benchtime 1x -timeout 120m .

##@ Lab

.PHONY: lab-up
lab-up: envtest-bin build ## Start the lab: an API server and 3 nodes as network namespaces.
	$(BIN)/routemode-lab up

.PHONY: lab-down
lab-down: ## Remove everything the lab made.
	$(GO) run ./cmd/routemode-lab down

.PHONY: demo
demo: envtest-bin build ## Switch the lab live from VXLAN to native routing with eBPF host routing and back.
	$(BIN)/routemode-lab demo
