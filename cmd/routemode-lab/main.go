// Command routemode-lab runs routemode on one machine: `up` starts an API
// server, node namespaces with the real agents, the operator and pods;
// `demo` switches it live and back under traffic; `down` removes it all.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/routemode/routemode/hack/lab"
)

const usage = `usage: routemode-lab up|down|demo|load|relay|supervise [flags] [FILE...]

  up     start the lab and leave it running (--real-nodes: containerd,
         kubelet and kube-proxy on every node, routemode installed with
         kubectl apply -k config/default)
  down   remove everything the lab made
  load   import image archives (FILE...) into every real node's containerd,
         under the names they carry, like kind load image-archive
  demo   start the lab with real nodes (as up --real-nodes), switch it
         VXLAN -> native+BPF -> VXLAN under traffic (--real-nodes=false:
         the network-namespace lab, without kubelets or containerd)
  relay  (internal) forward 127.0.0.1:6443 in a node namespace to the API server
  supervise --pid-file F -- CMD ARGS...
         (internal) run CMD, restarting it with backoff whenever it exits
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	// The lab's clients log nothing worth reading; without a logger
	// controller-runtime prints a stack trace saying so.
	ctrllog.SetLogger(logr.Discard())
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer cancel()
	if err := run(ctx, os.Args[1], os.Args[2:]); err != nil {
		fmt.Fprintln(os.Stderr, "routemode-lab:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, cmd string, args []string) error {
	fs := flag.NewFlagSet(cmd, flag.ExitOnError)
	root, _ := os.Getwd()
	exe, _ := os.Executable()
	cfg := lab.Config{}
	fs.StringVar(&cfg.Dir, "dir", filepath.Join(root, ".lab"), "the lab's state directory")
	fs.IntVar(&cfg.Nodes, "nodes", 3, "number of nodes")
	fs.StringVar(&cfg.Prefix, "prefix", "", "prepended to every namespace name, for a second lab next to one with the plain names")
	fs.StringVar(&cfg.Root, "root", root, "the repository root (for config/)")
	fs.StringVar(&cfg.Bin, "bin", filepath.Dir(exe), "directory of the routemode binaries")
	fs.StringVar(&cfg.K8sBin, "k8s-bin", filepath.Join(root, "bin", "k8s"), "directory of kube-apiserver, etcd and kubectl")
	// The demo shows what users install, so it runs real nodes unless
	// told not to; up stays the fast network-namespace lab by default.
	fs.BoolVar(&cfg.RealNodes, "real-nodes", cmd == "demo", "up, demo: run containerd, kubelet and kube-proxy on the nodes and install routemode from config/default (demo's default)")
	fs.StringVar(&cfg.NodeBin, "node-bin", filepath.Join(root, "bin", "node"), "directory of the real nodes' binaries (make node-bin)")
	images := fs.String("images", strings.Join([]string{filepath.Join(root, "bin", "images", "routemode-operator.tar"),
		filepath.Join(root, "bin", "images", "routemode-agent.tar"), filepath.Join(root, "bin", "images", lab.EchoArchive)}, ","),
		"real nodes: comma-separated image archives to import into every node (make images)")
	keep := fs.Bool("keep", os.Getenv("DEMO_KEEP") != "0", "demo: leave the lab up afterwards (DEMO_KEEP=0 removes it)")
	rate := fs.Int("rate", 1000, "demo: probes per second in all")
	netnsPath := fs.String("netns", "", "relay: the node namespace")
	to := fs.String("to", "", "relay: the API server's host address")
	pidFile := fs.String("pid-file", "", "supervise: where to write the running child's pid")
	listen := fs.String("listen", "", "relay: the address to listen on in the namespace (default 127.0.0.1:6443)")
	_ = fs.Parse(args)
	if *images != "" {
		cfg.Images = strings.Split(*images, ",")
	}

	switch cmd {
	case "up":
		l, err := lab.Up(ctx, cfg)
		if err != nil {
			return err
		}
		if err := l.Bootstrap(ctx, filepath.Join(cfg.Root, "config", "samples", "tunnel.yaml")); err != nil {
			return errors.Join(err, lab.Down(cfg.Dir))
		}
		printUsage(l)
		return nil
	case "down":
		return lab.Down(cfg.Dir)
	case "relay":
		return lab.Relay(ctx, *netnsPath, *listen, *to)
	case "supervise":
		return lab.Supervise(ctx, *pidFile, fs.Args())
	case "load":
		if fs.NArg() == 0 {
			return errors.New("load: name the image archives to import")
		}
		l, err := lab.Open(cfg)
		if err != nil {
			return err
		}
		return l.Load(ctx, fs.Args()...)
	case "demo":
		return demo(ctx, cfg, *keep, *rate)
	}
	fmt.Fprint(os.Stderr, usage)
	return fmt.Errorf("unknown command %q", cmd)
}

func demo(ctx context.Context, cfg lab.Config, keep bool, rate int) error {
	start := time.Now()
	if cfg.RealNodes {
		fmt.Printf("Starting the lab: kube-apiserver, etcd, kube-scheduler and kube-controller-manager, %d nodes each with containerd, kubelet and kube-proxy;\n"+
			"routemode installed with kubectl apply -k config/default from the image archives in bin/images...\n", cfg.Nodes)
	} else {
		fmt.Printf("Starting the lab: kube-apiserver and etcd, %d nodes as network namespaces, the agents, the operator, one pod per node...\n", cfg.Nodes)
	}
	if err := lab.Down(cfg.Dir); err != nil {
		return fmt.Errorf("removing a previous lab: %w", err)
	}
	l, err := lab.Up(ctx, cfg)
	if err != nil {
		return err
	}
	fmt.Printf("Lab up in %.0fs.\n", time.Since(start).Seconds())
	d := &lab.Demo{Lab: l, Out: os.Stdout, Rate: rate, Window: 2 * time.Second}
	results, err := d.Run(ctx)
	if err == nil {
		for _, r := range results {
			if r.Traffic.UDP.Lost != 0 || r.Traffic.TCP.Resets != 0 {
				err = fmt.Errorf("%s lost %d probes and reset %d TCP connections", r.Name, r.Traffic.UDP.Lost, r.Traffic.TCP.Resets)
			}
			if s := r.Traffic.Service; s != nil && s.Failed != 0 {
				err = errors.Join(err, fmt.Errorf("%s: %d of %d requests to the Service failed (the workload's threads waited %s for a CPU meanwhile): %s",
					r.Name, s.Failed, s.Sent, s.CPUWait.Round(time.Millisecond), s.Window))
			}
		}
	}
	if !keep {
		return errors.Join(err, lab.Down(cfg.Dir))
	}
	printUsage(l)
	return err
}

func printUsage(l *lab.Lab) {
	n := l.Nodes[0].NS
	if l.Real() {
		fmt.Printf(`
The lab is up, with real nodes. To use it:
  export KUBECONFIG=%s
  %s get pods -A -o wide
  make lab-load IMAGES=my-image.tar          # import an image archive into every node
  nsenter --net=/var/run/netns/%s ip route   # a node's routes
  kubectl apply -f config/samples/native-routing.yaml   # switch it live
Remove it with: make lab-down
`, l.Kubeconfig(), filepath.Join(filepathK8s(l), "kubectl"), n)
		return
	}
	fmt.Printf(`
The lab is up. To use it:
  export KUBECONFIG=%s
  %s get routingmode,routingnodes
  ip netns exec %s ip route                  # a node's routes
  ip netns exec %s ip -d link show           # a node's devices
  ip netns exec %s ip addr                   # a pod
  kubectl apply -f config/samples/native-routing.yaml   # switch it live
Remove it with: make lab-down
`, l.Kubeconfig(), filepath.Join(filepathK8s(l), "kubectl"), n, n, l.Pods()[0].Name)
}

func filepathK8s(l *lab.Lab) string { return l.K8sBin() }
