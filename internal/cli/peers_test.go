package cli

import (
	"context"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

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

// TestStatusPeersFromAgentSocket reads the table the way it is read inside
// the agent's pod (kubectl exec … routemodectl status --peers
// --agent-socket): from the agent's own socket, served as the agent serves
// it, with no credentials and no API server.
func TestStatusPeersFromAgentSocket(t *testing.T) {
	rows := []peertable.Row{{Node: "worker-2", NodeIP: "192.168.0.2", Direct: true, Probed: true, Reachable: true, RTTMicroseconds: 85}}
	path := filepath.Join(t.TempDir(), agentcontroller.SocketName)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- agentcontroller.ServePeersSocket(ctx, path, func() []peertable.Row { return rows }) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serving the socket: %v", err)
		}
		if _, err := os.Stat(path); !os.IsNotExist(err) {
			t.Errorf("the socket is left behind: %v", err)
		}
	})
	var r result
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if r = run(t, noDeps(), "", "status", "--peers", "--agent-socket", path); r.code == 0 {
			break
		}
	}
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.err)
	}
	mustContain(t, "peer table", r.out, "Peers of this node: 1", "worker-2  192.168.0.2  true    true       85µs  -")
	if st, err := os.Stat(path); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v (%v), want 0600: only root on the node may read it", st.Mode(), err)
	}
	if r := run(t, noDeps(), "", "status", "--peers", "--agent-socket", path, "--node", "worker-1"); r.code == 0 {
		t.Errorf("--node and --agent-socket together were accepted")
	}
	missing := filepath.Join(t.TempDir(), "none.sock")
	if r := run(t, noDeps(), "", "status", "--peers", "--agent-socket", missing); r.code == 0 || !strings.Contains(r.err, "kubectl exec") {
		t.Errorf("a missing socket: exit %d, %q; want an error saying where to run it", r.code, r.err)
	}
}
