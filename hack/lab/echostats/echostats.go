// Package echostats is what routemode-echo's client reports on /window:
// shared by the client and the lab that reads it, and small, so the
// workload's image does not carry the lab.
package echostats

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
)

// MaxFailures is how many failed requests a window describes one by one;
// Failed counts them all.
const MaxFailures = 20

// Window is what the client saw between two reads of /window.
type Window struct {
	// Sent counts the requests started in the window; OK the answers
	// that came in it, and Failed the failures that came in it of
	// requests started in it.
	Sent   int64 `json:"sent"`
	OK     int64 `json:"ok"`
	Failed int64 `json:"failed"`
	// FailedEarlier counts the failures that came in the window of
	// requests started before it: a request times out long after it was
	// sent, and its failure belongs to what happened then, maybe to
	// before the traffic that reads this window began.
	FailedEarlier int64 `json:"failedEarlier,omitempty"`
	// Backends counts the answers by the pod that gave them.
	Backends map[string]int64 `json:"backends"`
	// LargestGapMS is the longest time without an answer, in
	// milliseconds, from the window's start.
	LargestGapMS float64 `json:"largestGapMs"`
	// Failures are the window's first MaxFailures failed requests: when
	// each started is what lines them up with the rollout's events.
	Failures []Failure `json:"failures,omitempty"`
}

// Failure is one failed request.
type Failure struct {
	Started time.Time `json:"started"`
	// Local is the connection's own address, when it got one: the
	// conntrack entry to look for.
	Local string `json:"local,omitempty"`
	Error string `json:"error"`
}

func (f Failure) String() string {
	local := ""
	if f.Local != "" {
		local = " from " + f.Local
	}
	return fmt.Sprintf("started %s%s: %s", f.Started.UTC().Format("15:04:05.000"), local, f.Error)
}

// Add records a failure, describing it if the window has room.
func (w *Window) Add(f Failure) {
	w.Failed++
	if len(w.Failures) < MaxFailures {
		w.Failures = append(w.Failures, f)
	}
}

// FailureTimes are the described failures' start times.
func (w Window) FailureTimes() []time.Time {
	t := make([]time.Time, len(w.Failures))
	for i, f := range w.Failures {
		t[i] = f.Started
	}
	return t
}

func (w Window) String() string {
	var b []string
	for _, k := range slices.Sorted(maps.Keys(w.Backends)) {
		b = append(b, fmt.Sprintf("%s=%d", k, w.Backends[k]))
	}
	s := fmt.Sprintf("sent=%d ok=%d failed=%d largest_gap=%.1fms backends=[%s]",
		w.Sent, w.OK, w.Failed, w.LargestGapMS, strings.Join(b, " "))
	if w.FailedEarlier > 0 {
		s += fmt.Sprintf(" failed_started_earlier=%d", w.FailedEarlier)
	}
	for _, f := range w.Failures {
		s += "\n  failed: " + f.String()
	}
	return s
}
