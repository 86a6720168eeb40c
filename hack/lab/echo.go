package lab

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/routemode/routemode/hack/lab/echostats"
	"github.com/routemode/routemode/internal/probe"
)

// The real nodes' Service workload: a Deployment of routemode-echo
// (hack/lab/routemode-echo) behind a ClusterIP Service, and a client pod
// that requests the ClusterIP without pause, so the lab's traffic also
// crosses kube-proxy's rules (DNAT to a backend, masquerade) on the way to
// a pod on another node.
//
// Each pod requests CPU, as a production workload does: without requests
// a pod is BestEffort, whose cgroup the kubelet gives 2 CPU shares against
// the agent's 51, so on a busy machine the backends may wait seconds for a
// CPU while the agent works. Loaded runs of the real-node test saw
// requests time out awaiting headers (the kernel had accepted the
// connection) 0.4 s after the backends' agent attached its programs, with
// no kernel change on any node around them: a starved backend is the
// likely reading, which ServiceReport.CPUWait now measures.

// EchoImage is the workload's image as `make images` tags it (the
// Makefile's default IMAGE_REGISTRY and IMAGE_TAG); EchoArchive is its
// archive's name in bin/images.
const (
	EchoImage   = "ghcr.io/routemode/routemode-echo:v0.1.0"
	EchoArchive = "routemode-echo.tar"
	// EchoDeployment is the backends' Deployment and Service, in the
	// default namespace.
	EchoDeployment = "echo"
	echoPort       = 8080
	echoStatsPort  = 8081
	// echoRate is the client's requests per second.
	echoRate = 50
	// echoTimeout is how long a request may take before it fails. Not the
	// client's 2 s: under two make tests side by side the workload's
	// threads waited minutes in all for a CPU (cpu.shares cannot give a
	// simulated node CPUs of its own) and answers came late, not never.
	// A reset, a refusal or a black hole of the Service path still fails
	// it, and the probe streams count every packet the datapath loses.
	echoTimeout = 10 * time.Second
)

// EchoState is the workload as the lab recorded it.
type EchoState struct {
	ServiceIP netip.Addr `json:"serviceIP"`
	// Client is the client pod, on the lab's first node.
	Client PodState `json:"client"`
}

// echoBackends keeps every backend off the client's node, so every request
// crosses from one node to another, and spreads them over the other nodes.
// A backend answers its readiness probe once it serves, and keeps serving
// for a while after SIGTERM (routemode-echo's -drain), until kube-proxy has
// stopped sending it new connections.
const echoBackends = `apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{NAME}}
  namespace: default
spec:
  replicas: {{REPLICAS}}
  selector:
    matchLabels: {app: {{NAME}}}
  template:
    metadata:
      labels: {app: {{NAME}}}
    spec:
      terminationGracePeriodSeconds: 30
      affinity:
        nodeAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
            nodeSelectorTerms:
            - matchExpressions:
              - {key: kubernetes.io/hostname, operator: NotIn, values: [{{CLIENT_NODE}}]}
      topologySpreadConstraints:
      - maxSkew: 1
        topologyKey: kubernetes.io/hostname
        whenUnsatisfiable: DoNotSchedule
        labelSelector:
          matchLabels: {app: {{NAME}}}
      containers:
      - name: echo
        image: {{IMAGE}}
        args: [serve, -listen, ":{{PORT}}", -drain, 10s]
        ports:
        - containerPort: {{PORT}}
        readinessProbe:
          httpGet: {path: /, port: {{PORT}}}
          periodSeconds: 1
        resources:
          requests: {cpu: 100m, memory: 32Mi}
---
apiVersion: v1
kind: Service
metadata:
  name: {{NAME}}
  namespace: default
spec:
  selector: {app: {{NAME}}}
  ports:
  - port: 80
    targetPort: {{PORT}}
`

const echoClient = `apiVersion: v1
kind: Pod
metadata:
  name: {{NAME}}-client
  namespace: default
  labels: {app: {{NAME}}-client}
spec:
  nodeName: {{CLIENT_NODE}}
  terminationGracePeriodSeconds: 0
  containers:
  - name: client
    image: {{IMAGE}}
    args: [client, -target, "http://{{SERVICE_IP}}/", -rate, "{{RATE}}", -timeout, "{{TIMEOUT}}", -stats, ":{{STATS_PORT}}"]
    resources:
      requests: {cpu: 100m, memory: 32Mi}
`

// addEcho starts the workload and records the client's pod.
func (l *Lab) addEcho(ctx context.Context) error {
	kv := []string{"{{NAME}}", EchoDeployment, "{{IMAGE}}", EchoImage, "{{CLIENT_NODE}}", l.Nodes[0].Name,
		"{{REPLICAS}}", strconv.Itoa(max(2, len(l.Nodes)-1)), "{{PORT}}", strconv.Itoa(echoPort),
		"{{RATE}}", strconv.Itoa(echoRate), "{{TIMEOUT}}", echoTimeout.String(), "{{STATS_PORT}}", strconv.Itoa(echoStatsPort)}
	if err := l.applyRendered("echo.yaml", echoBackends, kv...); err != nil {
		return err
	}
	if _, err := l.Kubectl("rollout", "status", "deployment/"+EchoDeployment, "--timeout=3m"); err != nil {
		return err
	}
	out, err := l.Kubectl("get", "service", EchoDeployment, "-o", "jsonpath={.spec.clusterIP}")
	if err != nil {
		return err
	}
	svc, err := netip.ParseAddr(strings.TrimSpace(out))
	if err != nil {
		return fmt.Errorf("service %s's clusterIP: %w", EchoDeployment, err)
	}
	if err := l.applyRendered("echo-client.yaml", echoClient, append(kv, "{{SERVICE_IP}}", svc.String())...); err != nil {
		return err
	}
	client := EchoDeployment + "-client"
	if _, err := l.Kubectl("wait", "--for=condition=Ready", "pod/"+client, "--timeout=3m"); err != nil {
		return err
	}
	pods, err := l.PodsOf(ctx, "app="+client)
	if err != nil {
		return err
	}
	if len(pods) != 1 {
		return fmt.Errorf("pod %s: found %d", client, len(pods))
	}
	l.state.Echo = &EchoState{ServiceIP: svc, Client: pods[0]}
	return l.saveState()
}

func (l *Lab) applyRendered(name, tmpl string, kv ...string) error {
	manifest := l.path(name)
	if err := os.WriteFile(manifest, []byte(render(tmpl, kv...)), 0o600); err != nil {
		return err
	}
	_, err := l.Apply(manifest)
	return err
}

// PodsOf lists the running pods with the labels selector selects, in the
// default namespace, each with the network namespace its node's containerd
// made for it.
func (l *Lab) PodsOf(ctx context.Context, selector string) ([]PodState, error) {
	out, err := l.Kubectl("get", "pods", "-l", selector, "--field-selector", "status.phase=Running",
		"-o", `jsonpath={range .items[*]}{.metadata.name} {.spec.nodeName} {.status.podIP}{"\n"}{end}`)
	if err != nil {
		return nil, err
	}
	var pods []PodState
	for line := range strings.SplitSeq(strings.TrimSpace(out), "\n") {
		if line == "" {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 3 {
			return nil, fmt.Errorf("pod line %q: want name, node and address", line)
		}
		ip, err := netip.ParseAddr(f[2])
		if err != nil {
			return nil, err
		}
		i := slices.IndexFunc(l.Nodes, func(n Node) bool { return n.Name == f[1] })
		if i < 0 {
			return nil, fmt.Errorf("pod %s on unknown node %s", f[0], f[1])
		}
		ns, err := l.podNetns(ctx, i, ip)
		if err != nil {
			return nil, fmt.Errorf("pod %s: %w", f[0], err)
		}
		pods = append(pods, PodState{Name: f[0], Node: l.Nodes[i].NS, IP: ip, NSPath: ns})
	}
	return pods, nil
}

// ServiceWindow returns what the client counted since the previous call,
// and starts counting afresh.
func (l *Lab) ServiceWindow(ctx context.Context) (echostats.Window, error) {
	var w echostats.Window
	if l.state.Echo == nil {
		return w, fmt.Errorf("the lab runs no Service workload")
	}
	c := l.state.Echo.Client
	body, err := HTTPGetIn(ctx, c.NSPath, netip.AddrPortFrom(c.IP, echoStatsPort), "/window")
	if err != nil {
		return w, fmt.Errorf("reading the Service client's counts: %w", err)
	}
	if err := json.Unmarshal(body, &w); err != nil {
		return w, fmt.Errorf("the Service client's counts %q: %w", body, err)
	}
	return w, nil
}

// HTTPGetIn gets path from addr over a connection made in the network
// namespace at nsPath, and returns the body of a 200 answer.
func HTTPGetIn(ctx context.Context, nsPath string, addr netip.AddrPort, path string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c, err := probe.DialTCP(ctx, nsPath, addr)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	if d, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(d)
	}
	if _, err := fmt.Fprintf(c, "GET %s HTTP/1.0\r\nHost: %s\r\n\r\n", path, addr); err != nil {
		return nil, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("GET http://%s%s: %s", addr, path, resp.Status)
	}
	return body, err
}

// echoCPUWait sums the run-queue wait (schedstat) of every thread of the
// lab's routemode-echo processes, found by their nodes' cgroups.
func (l *Lab) echoCPUWait() time.Duration {
	cgroup := nodeCgroupPrefix + l.cfg.Prefix + "node-"
	var sum time.Duration
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		dir := filepath.Join("/proc", p.Name())
		comm, err := os.ReadFile(filepath.Join(dir, "comm"))
		if err != nil || strings.TrimSpace(string(comm)) != "routemode-echo" {
			continue
		}
		if cg, _ := os.ReadFile(filepath.Join(dir, "cgroup")); !strings.Contains(string(cg), "/"+cgroup) {
			continue
		}
		threads, _ := filepath.Glob(filepath.Join(dir, "task", "*", "schedstat"))
		for _, t := range threads {
			b, _ := os.ReadFile(t)
			// "<ns on a CPU> <ns waiting for one> <timeslices>"
			if f := strings.Fields(string(b)); len(f) == 3 {
				ns, _ := strconv.ParseInt(f[1], 10, 64)
				sum += time.Duration(ns)
			}
		}
	}
	return sum
}
