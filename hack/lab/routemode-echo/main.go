// Command routemode-echo is the real-node lab's workload, built into the
// routemode-echo image by `make images`:
//
//	routemode-echo serve [-listen :8080] [-drain 5s]
//	routemode-echo client -target http://CLUSTER-IP:80/ [-rate 50] [-stats :8081]
//
// serve answers every request with the name of the pod it runs in (its
// hostname). On SIGTERM it keeps answering for -drain before it shuts
// down, as a well-behaved backend does: kube-proxy stops sending it new
// connections only once the terminating endpoint has reached it.
//
// client sends -rate requests per second to -target, each on a new
// connection so that kube-proxy picks a backend for every one, and counts
// them. GET /window on -stats returns the counts since the previous
// /window as JSON and starts counting afresh, so a test reads exactly the
// requests of the window it watched.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/routemode/routemode/hack/lab/echostats"
)

const usage = `usage:
  routemode-echo serve  [-listen :8080] [-drain 5s]
  routemode-echo client -target URL [-rate 50] [-timeout 2s] [-stats :8081]`

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "routemode-echo:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) == 0 {
		return errors.New(usage)
	}
	fs := flag.NewFlagSet(args[0], flag.ContinueOnError)
	listen := fs.String("listen", ":8080", "serve: address to answer on")
	drain := fs.Duration("drain", 5*time.Second, "serve: how long to keep answering after SIGTERM")
	target := fs.String("target", "", "client: the URL to request, e.g. the Service's http://CLUSTER-IP:80/")
	rate := fs.Int("rate", 50, "client: requests per second")
	timeout := fs.Duration("timeout", 2*time.Second, "client: a request not answered within this fails")
	stats := fs.String("stats", ":8081", "client: address of the /window endpoint")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	switch args[0] {
	case "serve":
		return serve(ctx, *listen, *drain)
	case "client":
		if *target == "" || *rate < 1 {
			return fmt.Errorf("client needs -target URL and a -rate of at least 1\n%s", usage)
		}
		return client(ctx, *target, *rate, *timeout, *stats)
	}
	return fmt.Errorf("unknown command %q\n%s", args[0], usage)
}

func serve(ctx context.Context, listen string, drain time.Duration) error {
	name, err := os.Hostname()
	if err != nil {
		return err
	}
	// The headers get longer than the client's 10 s per request: a
	// backend starved of CPU for more than 5 s (a loaded real-node run saw
	// answers 5.9 s apart) closed a connection whose request it had not
	// read yet, and the client counted an EOF against the datapath.
	srv := &http.Server{Addr: listen, ReadHeaderTimeout: 30 * time.Second,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, name) })}
	errc := make(chan error, 1)
	go func() { errc <- srv.ListenAndServe() }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	time.Sleep(drain)
	shut, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return srv.Shutdown(shut)
}

type counter struct {
	mu     sync.Mutex
	w      echostats.Window
	lastOK time.Time
	// start is when the window began.
	start time.Time
}

func (c *counter) result(backend string, failure echostats.Failure, err error) {
	if err != nil {
		failure.Error = err.Error()
		// The pod's log keeps every failure, with its time, past the
		// window's first MaxFailures.
		fmt.Fprintf(os.Stderr, "%s failed: %s\n", time.Now().UTC().Format(time.RFC3339Nano), failure)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil {
		if failure.Started.Before(c.start) {
			c.w.FailedEarlier++
			return
		}
		c.w.Add(failure)
		return
	}
	c.w.OK++
	c.w.Backends[backend]++
	now := time.Now()
	c.w.LargestGapMS = max(c.w.LargestGapMS, float64(now.Sub(c.lastOK).Microseconds())/1000)
	c.lastOK = now
}

// take returns the window and starts a new one; the gap is measured from
// the take, so a window that starts in an outage shows it.
func (c *counter) take() echostats.Window {
	c.mu.Lock()
	defer c.mu.Unlock()
	w := c.w
	c.w = echostats.Window{Backends: map[string]int64{}}
	c.lastOK = time.Now()
	c.start = c.lastOK
	return w
}

func client(ctx context.Context, target string, rate int, timeout time.Duration, stats string) error {
	c := &counter{}
	c.take()
	mux := http.NewServeMux()
	mux.HandleFunc("GET /window", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(c.take())
	})
	srv := &http.Server{Addr: stats, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.ListenAndServe() }()
	// A new connection per request: kube-proxy balances connections, and
	// each one crosses its rules and the datapath from the start.
	hc := &http.Client{Timeout: timeout, Transport: &http.Transport{DisableKeepAlives: true}}
	tick := time.NewTicker(time.Second / time.Duration(rate))
	defer tick.Stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		select {
		case err := <-errc:
			return err
		case <-ctx.Done():
			return srv.Close()
		case <-tick.C:
		}
		c.mu.Lock()
		c.w.Sent++
		c.mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.result(get(hc, target))
		}()
	}
}

// get requests url and returns the answering backend's name, or the
// error with what the failure's report needs.
func get(hc *http.Client, url string) (string, echostats.Failure, error) {
	f := echostats.Failure{Started: time.Now()}
	trace := &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) { f.Local = i.Conn.LocalAddr().String() }}
	req, err := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), http.MethodGet, url, nil)
	if err != nil {
		return "", f, err
	}
	backend, err := do(hc, req)
	return backend, f, err
}

func do(hc *http.Client, req *http.Request) (string, error) {
	resp, err := hc.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 256))
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%s: %s", req.URL, resp.Status)
	}
	return strings.TrimSpace(string(body)), nil
}
