package masq

import (
	"maps"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"

	"github.com/routemode/routemode/internal/privileged"

	"github.com/routemode/routemode/agent/nsutil"
)

// inNewNS returns a Masq working in a network namespace of its own, removed
// when the test ends.
func inNewNS(t *testing.T) Masq {
	t.Helper()
	privileged.Require(t, "creates a network namespace")
	name, n, err := nsutil.CreateTemp("rmmasq")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close(); _ = nsutil.Delete(name) })
	return Masq{NetNSFd: int(n.Fd())}
}

func addrs(s ...string) []netip.Addr {
	out := make([]netip.Addr, len(s))
	for i, a := range s {
		out[i] = netip.MustParseAddr(a)
	}
	return out
}

// ruleHandle is the kernel's handle of the one masquerade rule: a new
// handle means the rule was written again.
func ruleHandle(t *testing.T, m Masq) uint64 {
	t.Helper()
	c, err := m.conn()
	if err != nil {
		t.Fatal(err)
	}
	rules, err := c.GetRules(table, &nftables.Chain{Name: Chain, Table: table})
	if err != nil || len(rules) != 1 {
		t.Fatalf("rules of %s/%s: %d %v, want one", Table, Chain, len(rules), err)
	}
	return rules[0].Handle
}

// nodes returns the members of the node set, sorted; nil if there is no
// set.
func (m Masq) nodes() ([]netip.Addr, error) {
	c, err := m.conn()
	if err != nil {
		return nil, err
	}
	have, err := members(c)
	if err != nil {
		return nil, err
	}
	return slices.SortedFunc(maps.Keys(have), netip.Addr.Compare), nil
}

func testConfig(nodes ...string) Config {
	return Config{PodCIDR: netip.MustParsePrefix("10.0.0.0/24"), Exempt: netip.MustParsePrefix("10.0.0.0/16"),
		Underlay: "eth0", NodeIP: netip.MustParseAddr("192.168.0.120"), Nodes: addrs(nodes...)}
}

func mustNodes(t *testing.T, m Masq, want []netip.Addr, when string) {
	t.Helper()
	got, err := m.nodes()
	if err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(want, netip.Addr.Compare)
	if !slices.Equal(got, want) {
		t.Errorf("%s: node set %v, want %v", when, got, want)
	}
}

func TestEnsureIsIdempotent(t *testing.T) {
	m := inNewNS(t)
	cfg := testConfig("192.168.0.120", "192.168.0.130")
	if cur, err := m.Current(); err != nil || cur != "" {
		t.Fatalf("fresh namespace: %q %v", cur, err)
	}
	if nodes, err := m.nodes(); err != nil || nodes != nil {
		t.Fatalf("fresh namespace: node set %v %v", nodes, err)
	}
	if changes, err := m.Ensure(cfg); err != nil || len(changes) != 1 {
		t.Fatalf("first Ensure: %v %v", changes, err)
	}
	mustNodes(t, m, cfg.Nodes, "first Ensure")
	if changes, err := m.Ensure(cfg); err != nil || len(changes) != 0 {
		t.Fatalf("second Ensure changed %v, err %v; want no change", changes, err)
	}
	cfg.NodeIP = netip.MustParseAddr("192.168.0.121")
	if changes, err := m.Ensure(cfg); err != nil || len(changes) != 1 {
		t.Fatalf("new node IP: %v %v", changes, err)
	}
	if cur, _ := m.Current(); cur != cfg.fingerprint() {
		t.Errorf("installed %q, want %q", cur, cfg.fingerprint())
	}
	mustNodes(t, m, cfg.Nodes, "after the table was rewritten")
	if err := m.Delete(); err != nil {
		t.Fatal(err)
	}
	if cur, _ := m.Current(); cur != "" {
		t.Errorf("after Delete: %q", cur)
	}
	if err := m.Delete(); err != nil {
		t.Errorf("second Delete: %v", err)
	}
}

// TestNodeSetUpdatedInPlace: nodes joining and leaving change the set's
// members and nothing else (the rule keeps its handle), bad input changes
// nothing, and a table of the previous version, without the set, is
// replaced.
func TestNodeSetUpdatedInPlace(t *testing.T) {
	m := inNewNS(t)
	old := testConfig()
	c, err := m.conn()
	if err != nil {
		t.Fatal(err)
	}
	// What an agent without the node set left: the same table and chain,
	// a rule without the lookup, and v1's fingerprint.
	c.AddTable(table)
	ch := c.AddChain(&nftables.Chain{Name: Chain, Table: table, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource})
	v1 := exprs(old, nodeSet)
	v1 = slices.Delete(v1, 6, 8) // the node set's lookup: the daddr load and the lookup
	c.AddRule(&nftables.Rule{Table: table, Chain: ch, Exprs: v1,
		UserData: []byte("routemode/v1 saddr=10.0.0.0/24 daddr!=10.0.0.0/16 oif=eth0 snat=192.168.0.120")})
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}

	cfg := testConfig("192.168.0.120", "192.168.0.130", "192.168.0.140")
	if changes, err := m.Ensure(cfg); err != nil || len(changes) != 1 || !strings.Contains(changes[0], "masquerade") {
		t.Fatalf("Ensure over the previous version's table: %v %v", changes, err)
	}
	mustNodes(t, m, cfg.Nodes, "over the previous version's table")
	handle := ruleHandle(t, m)

	cfg.Nodes = addrs("192.168.0.120", "192.168.0.140", "192.168.0.150", "192.168.0.160")
	changes, err := m.Ensure(cfg)
	if err != nil || len(changes) != 1 || !strings.Contains(changes[0], "+2 -1") {
		t.Fatalf("two nodes joined, one left: %v %v; want one line saying +2 -1", changes, err)
	}
	mustNodes(t, m, cfg.Nodes, "after two joined and one left")
	if h := ruleHandle(t, m); h != handle {
		t.Errorf("the rule was rewritten (handle %d, was %d) when only members changed", h, handle)
	}
	if changes, err := m.Ensure(cfg); err != nil || len(changes) != 0 {
		t.Errorf("Ensure again: %v %v; want no change", changes, err)
	}

	bad := cfg
	bad.Nodes = append(slices.Clone(cfg.Nodes), netip.MustParseAddr("fd00::1"))
	if changes, err := m.Ensure(bad); err == nil || !strings.Contains(err.Error(), "fd00::1") || len(changes) != 0 {
		t.Errorf("Ensure with an IPv6 node: %v %v; want an error naming it and no change", changes, err)
	}
	mustNodes(t, m, cfg.Nodes, "after refused input")

	cfg.Nodes = nil
	if changes, err := m.Ensure(cfg); err != nil || len(changes) != 1 || !strings.Contains(changes[0], "+0 -4") {
		t.Fatalf("every node gone: %v %v", changes, err)
	}
	mustNodes(t, m, nil, "with no nodes")
	if h := ruleHandle(t, m); h != handle {
		t.Errorf("the rule was rewritten when the set emptied")
	}
}

// TestNodeSetAt5000Nodes writes the set of a 5,000-node cluster (more
// elements than one netlink message holds), then measures what every
// reconcile costs (reading it back) and what a node joining costs.
func TestNodeSetAt5000Nodes(t *testing.T) {
	m := inNewNS(t)
	var nodes []netip.Addr
	a := netip.MustParseAddr("172.16.0.1")
	for range 5000 {
		nodes = append(nodes, a)
		a = a.Next()
	}
	cfg := testConfig()
	cfg.Nodes = nodes
	start := time.Now()
	if _, err := m.Ensure(cfg); err != nil {
		t.Fatal(err)
	}
	write := time.Since(start)
	mustNodes(t, m, slices.Clone(nodes), "5000 nodes")
	start = time.Now()
	if changes, err := m.Ensure(cfg); err != nil || len(changes) != 0 {
		t.Fatalf("Ensure again: %v %v", changes, err)
	}
	noop := time.Since(start)
	cfg.Nodes = append(slices.Clone(nodes[1:]), a)
	start = time.Now()
	if changes, err := m.Ensure(cfg); err != nil || len(changes) != 1 || !strings.Contains(changes[0], "+1 -1") {
		t.Fatalf("one node replaced: %v %v", changes, err)
	}
	update := time.Since(start)
	mustNodes(t, m, slices.Clone(cfg.Nodes), "one node replaced")
	t.Logf("5000 nodes: first write %s, unchanged Ensure %s, one node replaced %s", write, noop, update)
}

// TestNodeSetPastTheDefaultSendBuffer writes 20,000 nodes at once, a
// batch (320 KB) that overflows a netlink socket's default send buffer.
func TestNodeSetPastTheDefaultSendBuffer(t *testing.T) {
	m := inNewNS(t)
	var nodes []netip.Addr
	for a := netip.MustParseAddr("172.16.0.1"); len(nodes) < 20000; a = a.Next() {
		nodes = append(nodes, a)
	}
	cfg := testConfig()
	cfg.Nodes = nodes
	if _, err := m.Ensure(cfg); err != nil {
		t.Fatal(err)
	}
	mustNodes(t, m, slices.Clone(nodes), "20000 nodes")
}
