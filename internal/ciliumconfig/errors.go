package ciliumconfig

import (
	"fmt"
	"strings"
)

// Problem is one reason a cilium-config cannot be imported: the keys
// involved, what is wrong, and what the user can do about it.
type Problem struct {
	// Keys are the cilium-config keys at fault, as key=value.
	Keys []string
	// What says what is wrong.
	What string
	// Fix says what to do.
	Fix string
}

func (p Problem) String() string {
	return fmt.Sprintf("%s: %s; %s", strings.Join(p.Keys, ", "), p.What, p.Fix)
}

// ImportError lists every problem found, so a user fixes them in one pass
// instead of rerunning once per key.
type ImportError struct {
	Problems []Problem
}

func (e *ImportError) Error() string {
	if len(e.Problems) == 1 {
		return "cannot import cilium-config: " + e.Problems[0].String()
	}
	var b strings.Builder
	fmt.Fprintf(&b, "cannot import cilium-config (%d problems):", len(e.Problems))
	for _, p := range e.Problems {
		b.WriteString("\n  - ")
		b.WriteString(p.String())
	}
	return b.String()
}

// HasKey reports whether any problem names key; tests and callers use it to
// check that an error points at the right key.
func (e *ImportError) HasKey(key string) bool {
	for _, p := range e.Problems {
		for _, k := range p.Keys {
			if k == key || strings.HasPrefix(k, key+"=") {
				return true
			}
		}
	}
	return false
}
