// Package bounded keeps messages that name nodes or peers to a size that
// does not grow with the cluster: a condition message is limited to 32,768
// bytes by the API server, and a message listing 5,000 node names would
// exceed it, so the status could not be written at all.
package bounded

import (
	"fmt"
	"strings"
	"unicode/utf8"
)

// DefaultNames is how many names a message lists before counting the rest.
const DefaultNames = 3

// MaxMessage is the longest condition or event message routemode writes,
// well under the API server's 32,768-byte limit on a condition message.
const MaxMessage = 1024

// Names lists up to limit names, in the order given, and counts the rest:
// "a, b, c and 997 more". limit < 1 lists one name.
func Names(names []string, limit int) string {
	return Counted(names, len(names), limit)
}

// Counted is Names for a list that is itself a capped sample of total
// items (such as a status that lists 16 peers and counts the rest): it lists
// up to limit of names and counts the other total-listed.
func Counted(names []string, total, limit int) string {
	listed := names[:min(max(limit, 1), len(names))]
	rest := total - len(listed)
	if rest <= 0 {
		return strings.Join(listed, ", ")
	}
	if len(listed) == 0 {
		return fmt.Sprintf("%d unnamed", rest)
	}
	return fmt.Sprintf("%s and %d more", strings.Join(listed, ", "), rest)
}

// Message cuts msg to at most MaxMessage bytes at a rune boundary, marking
// the cut. It is the last guard for text that embeds something unbounded,
// such as an error from the kernel or an agent.
func Message(msg string) string {
	if len(msg) <= MaxMessage {
		return msg
	}
	const mark = " …(truncated)"
	cut := MaxMessage - len(mark)
	for cut > 0 && !utf8.RuneStart(msg[cut]) {
		cut--
	}
	return msg[:cut] + mark
}
