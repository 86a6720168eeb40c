package main

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/routemode/routemode/hack/lab/echostats"
)

// A request that is never answered is reported with its start and the
// connection's own address, the two things that find it in a conntrack
// dump and a rollout's log; the window describes at most MaxFailures.
func TestFailedRequestsAreDescribed(t *testing.T) {
	hang := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/hang" {
			<-hang
		}
		_, _ = w.Write([]byte("backend-1\n"))
	}))
	defer srv.Close()
	defer close(hang)
	client := func(timeout time.Duration) *http.Client {
		return &http.Client{Timeout: timeout, Transport: &http.Transport{DisableKeepAlives: true}}
	}

	c := &counter{}
	c.take()
	c.result(get(client(time.Minute), srv.URL+"/"))
	before := time.Now()
	for range echostats.MaxFailures + 5 {
		c.result(get(client(50*time.Millisecond), srv.URL+"/hang"))
	}
	w := c.take()
	if w.OK != 1 || w.Backends["backend-1"] != 1 || w.Failed != echostats.MaxFailures+5 || len(w.Failures) != echostats.MaxFailures {
		t.Fatalf("window %s; want 1 answer from backend-1 and %d failures, %d of them described", w, echostats.MaxFailures+5, echostats.MaxFailures)
	}
	f := w.Failures[0]
	if f.Started.Before(before) || !strings.HasPrefix(f.Local, "127.0.0.1:") || !strings.Contains(f.Error, "Client.Timeout exceeded") {
		t.Errorf("failure %+v; want it started after %s, from 127.0.0.1 and timed out", f, before)
	}
	if !strings.Contains(w.String(), "failed: started ") {
		t.Errorf("the window's text does not describe its failures: %s", w)
	}
}

// A request that fails after the window it was sent in was taken counts in
// the next window as a failure of a request started earlier, not as one of
// that window's own.
func TestFailureOfAnEarlierRequest(t *testing.T) {
	c := &counter{}
	c.take()
	sent := echostats.Failure{Started: time.Now()}
	if w := c.take(); w.Failed != 0 || w.FailedEarlier != 0 {
		t.Fatalf("first window %s; want nothing failed", w)
	}
	c.result("", sent, errors.New("context deadline exceeded (Client.Timeout exceeded while awaiting headers)"))
	c.result("", echostats.Failure{Started: time.Now()}, errors.New("connection refused"))
	w := c.take()
	if w.Failed != 1 || w.FailedEarlier != 1 || len(w.Failures) != 1 || !strings.Contains(w.String(), "failed_started_earlier=1") {
		t.Fatalf("second window %s; want one failure of its own and one of a request started earlier", w)
	}
}
