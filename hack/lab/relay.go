package lab

import (
	"context"
	"fmt"
	"io"
	"net"
	"sync"

	"github.com/routemode/routemode/agent/nsutil"
)

// RelayPort is where the API server answers inside every node namespace.
const RelayPort = 6443

// AgentMetricsPort is where each node's agent serves Prometheus metrics, on
// 127.0.0.1 inside the node's namespace.
const AgentMetricsPort = 9878

// listenIn opens a TCP listener inside the network namespace at nsPath. A
// socket belongs to the namespace it was created in, so the rest of the
// relay runs on any thread, in the host's namespace.
func listenIn(nsPath, addr string) (net.Listener, error) {
	var l net.Listener
	err := nsutil.RunIn(nsPath, func() error {
		var err error
		l, err = net.Listen("tcp", addr)
		return err
	})
	return l, err
}

// Relay forwards connections made to listen (127.0.0.1:RelayPort when
// empty) inside the namespace at nsPath to target on the host's loopback,
// so agents reach the API server without the lab adding any address or
// route to the host.
func Relay(ctx context.Context, nsPath, listen, target string) error {
	if listen == "" {
		listen = fmt.Sprintf("127.0.0.1:%d", RelayPort)
	}
	l, err := listenIn(nsPath, listen)
	if err != nil {
		return fmt.Errorf("listening in %s: %w", nsPath, err)
	}
	go func() { <-ctx.Done(); l.Close() }()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		in, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer in.Close()
			out, err := net.Dial("tcp", target)
			if err != nil {
				return
			}
			defer out.Close()
			done := make(chan struct{}, 2)
			go func() { _, _ = io.Copy(out, in); done <- struct{}{} }()
			go func() { _, _ = io.Copy(in, out); done <- struct{}{} }()
			<-done
		}()
	}
}
