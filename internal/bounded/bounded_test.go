package bounded

import (
	"fmt"
	"strings"
	"testing"
	"unicode/utf8"
)

func nodes(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("node-%d", i+1)
	}
	return out
}

func TestNames(t *testing.T) {
	for name, tc := range map[string]struct {
		names []string
		limit int
		want  string
	}{
		"none":              {nil, 3, ""},
		"one":               {nodes(1), 3, "node-1"},
		"exactly the limit": {nodes(3), 3, "node-1, node-2, node-3"},
		"one more":          {nodes(4), 3, "node-1, node-2, node-3 and 1 more"},
		"a thousand":        {nodes(1000), 3, "node-1, node-2, node-3 and 997 more"},
		"limit below one":   {nodes(2), 0, "node-1 and 1 more"},
	} {
		t.Run(name, func(t *testing.T) {
			if got := Names(tc.names, tc.limit); got != tc.want {
				t.Errorf("Names = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestCounted(t *testing.T) {
	for name, tc := range map[string]struct {
		names        []string
		total, limit int
		want         string
	}{
		"all listed":             {nodes(2), 2, 3, "node-1, node-2"},
		"sample of a larger set": {nodes(2), 20, 3, "node-1, node-2 and 18 more"},
		"sample over the limit":  {nodes(16), 5000, 3, "node-1, node-2, node-3 and 4997 more"},
		"none listed":            {nil, 4, 3, "4 unnamed"},
	} {
		t.Run(name, func(t *testing.T) {
			if got := Counted(tc.names, tc.total, tc.limit); got != tc.want {
				t.Errorf("Counted = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestNamesStaysSmallAtAnySize(t *testing.T) {
	small, large := Names(nodes(10), DefaultNames), Names(nodes(100000), DefaultNames)
	if len(large)-len(small) > 4 { // only the count's digits grow
		t.Errorf("message grew from %d to %d bytes", len(small), len(large))
	}
}

func TestMessage(t *testing.T) {
	for name, tc := range map[string]struct {
		in       string
		wantSame bool
	}{
		"short":             {"all 3 peers answer", true},
		"exactly the limit": {strings.Repeat("a", MaxMessage), true},
		"over the limit":    {strings.Repeat("a", 40000), false},
		"multibyte at cut":  {strings.Repeat("é", MaxMessage), false},
	} {
		t.Run(name, func(t *testing.T) {
			got := Message(tc.in)
			if len(got) > MaxMessage || !utf8.ValidString(got) {
				t.Fatalf("Message gave %d bytes (valid UTF-8: %v)", len(got), utf8.ValidString(got))
			}
			if (got == tc.in) != tc.wantSame {
				t.Errorf("Message changed=%v, want changed=%v", got != tc.in, !tc.wantSame)
			}
			if !tc.wantSame && !strings.HasSuffix(got, "(truncated)") {
				t.Errorf("a cut message must say so: %q", got[len(got)-20:])
			}
		})
	}
}
