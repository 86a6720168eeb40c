// Package echostats is what routemode-echo's client reports on /window:
// shared by the client and the lab that reads it, and small, so the
// workload's image does not carry the lab.
package echostats

import (
	"fmt"
	"maps"
	"slices"
	"strings"
)

// Window is what the client saw between two reads of /window.
type Window struct {
	// Sent counts the requests started in the window; OK and Failed the
	// answers and failures that came in it.
	Sent   int64 `json:"sent"`
	OK     int64 `json:"ok"`
	Failed int64 `json:"failed"`
	// Backends counts the answers by the pod that gave them.
	Backends map[string]int64 `json:"backends"`
	// LargestGapMS is the longest time without an answer, in
	// milliseconds, from the window's start.
	LargestGapMS float64 `json:"largestGapMs"`
	LastError    string  `json:"lastError,omitempty"`
}

func (w Window) String() string {
	var b []string
	for _, k := range slices.Sorted(maps.Keys(w.Backends)) {
		b = append(b, fmt.Sprintf("%s=%d", k, w.Backends[k]))
	}
	return fmt.Sprintf("sent=%d ok=%d failed=%d largest_gap=%.1fms backends=[%s] last_error=%q",
		w.Sent, w.OK, w.Failed, w.LargestGapMS, strings.Join(b, " "), w.LastError)
}
