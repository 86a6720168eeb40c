package cli

import (
	"context"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	agentcontroller "github.com/routemode/routemode/agent/controller"
	"github.com/routemode/routemode/internal/peertable"
)

// hostAddr is an address of this machine the API server will proxy to: it
// refuses loopback and link-local addresses for nodes.
func hostAddr(t *testing.T) netip.Addr {
	t.Helper()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil && p.Addr().Is4() && !p.Addr().IsLoopback() && !p.Addr().IsLinkLocalUnicast() {
			return p.Addr()
		}
	}
	t.Fatal("this machine has no IPv4 address besides loopback for the API server to proxy to")
	return netip.Addr{}
}

// TestClusterStatusPeers reads a node's full peer table the way an operator
// would: routemodectl asks the API server's node proxy, which reaches the
// agent's handler on the node's InternalIP.
func TestClusterStatusPeers(t *testing.T) {
	e, _ := startEnv(t)
	ip := hostAddr(t)
	ln, err := net.Listen("tcp", net.JoinHostPort(ip.String(), "0"))
	if err != nil {
		t.Fatal(err)
	}
	rows := []peertable.Row{
		{Node: "worker-2", NodeIP: "192.168.0.2", Direct: true, Probed: true, Reachable: true, RTTMicroseconds: 85},
		{Node: "worker-3", NodeIP: "10.9.0.3", Probed: true, Message: "not directly reachable: via 192.168.0.254; health endpoint 10.0.3.2 does not answer"},
	}
	mux := http.NewServeMux()
	mux.Handle(agentcontroller.PeersPath, agentcontroller.PeerTableHandler(func() []peertable.Row { return rows }))
	srv := &http.Server{Handler: mux}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })

	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "worker-1"}}
	if err := e.Client.Create(context.Background(), node); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.Client.Delete(context.Background(), node) })
	node.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: ip.String()}}
	if err := e.Client.Status().Update(context.Background(), node); err != nil {
		t.Fatal(err)
	}
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)

	r := kubectl(t, "", "status", "--node", "worker-1", "--peers", "--agent-port", port)
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.err)
	}
	mustContain(t, "peer table", r.out,
		"Peers of worker-1: 2",
		"worker-2  192.168.0.2  true    true       85µs  -",
		"worker-3  10.9.0.3     false   false      -     not directly reachable: via 192.168.0.254; health endpoint 10.0.3.2 does not answer")

	if r := kubectl(t, "", "status", "--peers"); r.code == 0 {
		t.Errorf("--peers without --node was accepted")
	}
	if r := kubectl(t, "", "status", "--node", "no-such-node", "--peers"); r.code == 0 {
		t.Errorf("a node that does not exist gave a table: %s", r.out)
	}
}
