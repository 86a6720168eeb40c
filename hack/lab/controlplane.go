package lab

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// controlPlane is the lab's etcd and kube-apiserver, both built from source,
// listening on the host's loopback only.
type controlPlane struct {
	dir string
	// advertise, for real nodes, is the API server's address for pods: a
	// relay on the underlay (netlab.OutsideIP) forwards it to the host's
	// loopback, and the kubernetes Service's endpoint names it.
	advertise string
	apiPort   int
	caPEM     []byte
	adminTok  string
}

// portsGiven are the ports freePort handed out in this process.
var (
	portsMu    sync.Mutex
	portsGiven = map[int]bool{}
)

// freePort returns a loopback TCP port nothing listens on now and that it
// has not returned before: once a probing listener closes, the kernel may
// offer its port again, and two lab processes told the same port fight
// over it. That happened: kube-controller-manager took the port
// kube-scheduler was given, the scheduler never started, and no pod of the
// lab was ever scheduled.
func freePort() (int, error) {
	portsMu.Lock()
	defer portsMu.Unlock()
	for range 100 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if !portsGiven[port] {
			portsGiven[port] = true
			return port, nil
		}
	}
	return 0, errors.New("no loopback port the lab has not handed out already, in 100 tries")
}

func writePEM(path, typ string, der []byte) error {
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600)
}

// writeCerts makes a CA, a serving certificate for 127.0.0.1 (the address
// the API server has on the host and, through the relays, in every node
// namespace) and the service-account signing key.
func (cp *controlPlane) writeCerts() error {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "routemode-lab-ca"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(365 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return err
	}
	caCert, _ := x509.ParseCertificate(caDER)
	srvKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	srvTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "kube-apiserver"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(365 * 24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, DNSNames: []string{"localhost", "kubernetes", "kubernetes.default.svc"},
	}
	if cp.advertise != "" {
		// Pods reach it as the kubernetes Service and through the relay.
		srvTmpl.IPAddresses = append(srvTmpl.IPAddresses, net.ParseIP(cp.advertise), net.ParseIP(kubernetesSvcIP))
	}
	srvDER, err := x509.CreateCertificate(rand.Reader, srvTmpl, caCert, &srvKey.PublicKey, caKey)
	if err != nil {
		return err
	}
	srvKeyDER, err := x509.MarshalECPrivateKey(srvKey)
	if err != nil {
		return err
	}
	saKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	saKeyDER, err := x509.MarshalECPrivateKey(saKey)
	if err != nil {
		return err
	}
	cp.caPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	return errors.Join(
		os.WriteFile(filepath.Join(cp.dir, "ca.crt"), cp.caPEM, 0o600),
		writePEM(filepath.Join(cp.dir, "apiserver.crt"), "CERTIFICATE", srvDER),
		writePEM(filepath.Join(cp.dir, "apiserver.key"), "EC PRIVATE KEY", srvKeyDER),
		writePEM(filepath.Join(cp.dir, "sa.key"), "EC PRIVATE KEY", saKeyDER),
	)
}

// start launches etcd and kube-apiserver as detached processes and waits
// until the API server is ready.
func (cp *controlPlane) start(ctx context.Context, l *Lab) error {
	if err := os.MkdirAll(cp.dir, 0o700); err != nil {
		return err
	}
	if err := cp.writeCerts(); err != nil {
		return fmt.Errorf("writing the control plane's certificates: %w", err)
	}
	tok := make([]byte, 16)
	if _, err := rand.Read(tok); err != nil {
		return err
	}
	cp.adminTok = hex.EncodeToString(tok)
	if err := os.WriteFile(filepath.Join(cp.dir, "tokens.csv"), []byte(cp.adminTok+",lab-admin,lab-admin,system:masters\n"), 0o600); err != nil {
		return err
	}
	etcdClient, err := freePort()
	if err != nil {
		return err
	}
	etcdPeer, err := freePort()
	if err != nil {
		return err
	}
	if cp.apiPort, err = freePort(); err != nil {
		return err
	}
	etcdURL := fmt.Sprintf("http://127.0.0.1:%d", etcdClient)
	if err := l.spawn("etcd", filepath.Join(l.cfg.K8sBin, "etcd"),
		"--data-dir", filepath.Join(cp.dir, "etcd"),
		"--listen-client-urls", etcdURL, "--advertise-client-urls", etcdURL,
		"--listen-peer-urls", fmt.Sprintf("http://127.0.0.1:%d", etcdPeer),
		"--initial-advertise-peer-urls", fmt.Sprintf("http://127.0.0.1:%d", etcdPeer),
		"--initial-cluster", fmt.Sprintf("default=http://127.0.0.1:%d", etcdPeer),
		"--unsafe-no-fsync", "--log-level", "warn"); err != nil {
		return err
	}
	// Without real nodes the lab has no kubernetes Service to keep in
	// step, and a loopback advertise address is refused by the endpoint
	// reconciler.
	advertise := []string{"--advertise-address", "127.0.0.1", "--endpoint-reconciler-type", "none"}
	if cp.advertise != "" {
		advertise = []string{"--advertise-address", cp.advertise}
	}
	if err := l.spawn("kube-apiserver", filepath.Join(l.cfg.K8sBin, "kube-apiserver"), append(advertise,
		"--etcd-servers", etcdURL,
		"--bind-address", "127.0.0.1",
		"--secure-port", fmt.Sprint(cp.apiPort),
		"--tls-cert-file", filepath.Join(cp.dir, "apiserver.crt"),
		"--tls-private-key-file", filepath.Join(cp.dir, "apiserver.key"),
		"--token-auth-file", filepath.Join(cp.dir, "tokens.csv"),
		"--service-account-issuer", "https://kubernetes.default.svc",
		"--service-account-key-file", filepath.Join(cp.dir, "sa.key"),
		"--service-account-signing-key-file", filepath.Join(cp.dir, "sa.key"),
		"--authorization-mode", "RBAC",
		"--service-cluster-ip-range", serviceCIDR,
		"--cert-dir", filepath.Join(cp.dir, "certs"))...); err != nil {
		return err
	}
	return cp.waitReady(ctx)
}

// startControllers runs kube-scheduler and kube-controller-manager, for
// real nodes: DaemonSets and Deployments need them, and the node IPAM
// controller gives every node its podCIDR from ClusterCIDR, as on a real
// cluster. Both use the admin kubeconfig and serve only on loopback.
func (cp *controlPlane) startControllers(l *Lab) error {
	kc := filepath.Join(cp.dir, "admin.kubeconfig")
	if err := cp.kubeconfig(kc, cp.url(), "lab-admin", cp.adminTok); err != nil {
		return err
	}
	for _, c := range []struct {
		name string
		args []string
	}{
		{"kube-scheduler", nil},
		{"kube-controller-manager", []string{
			"--allocate-node-cidrs", "--cluster-cidr", ClusterCIDR.String(), "--node-cidr-mask-size", "24",
			"--service-cluster-ip-range", serviceCIDR,
			// Service account tokens for the pods, and the CA they trust.
			"--service-account-private-key-file", filepath.Join(cp.dir, "sa.key"),
			"--root-ca-file", filepath.Join(cp.dir, "ca.crt"),
		}},
	} {
		port, err := freePort()
		if err != nil {
			return err
		}
		args := append([]string{"--kubeconfig", kc, "--authentication-kubeconfig", kc, "--authorization-kubeconfig", kc,
			"--leader-elect=false", "--bind-address", "127.0.0.1", "--secure-port", fmt.Sprint(port)}, c.args...)
		if err := l.spawn(c.name, filepath.Join(l.cfg.NodeBin, c.name), args...); err != nil {
			return err
		}
	}
	return nil
}

func (cp *controlPlane) waitReady(ctx context.Context) error {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(cp.caPEM)
	c := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	// Generous: the API server starts in seconds on an idle machine and took
	// over 20 s under a load average of 40 on 2 cores (envtest, same binary).
	deadline := time.Now().Add(3 * time.Minute)
	var last error
	for time.Now().Before(deadline) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, cp.url()+"/readyz", nil)
		req.Header.Set("Authorization", "Bearer "+cp.adminTok)
		resp, err := c.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("readyz answered %s", resp.Status)
		}
		last = err
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
	return fmt.Errorf("kube-apiserver not ready after 90s (see %s): %w", filepath.Join(cp.dir, "..", "logs", "kube-apiserver.log"), last)
}

func (cp *controlPlane) url() string { return fmt.Sprintf("https://127.0.0.1:%d", cp.apiPort) }

// kubeconfig writes a kubeconfig for server with token.
func (cp *controlPlane) kubeconfig(path, server, user, token string) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["lab"] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: cp.caPEM}
	cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{Token: token}
	cfg.Contexts["lab"] = &clientcmdapi.Context{Cluster: "lab", AuthInfo: user}
	cfg.CurrentContext = "lab"
	return clientcmd.WriteToFile(*cfg, path)
}

func (cp *controlPlane) restConfig() *rest.Config {
	return &rest.Config{Host: cp.url(), BearerToken: cp.adminTok, TLSClientConfig: rest.TLSClientConfig{CAData: cp.caPEM}}
}

// agentToken issues the routemode-agent service account a token bound to
// one Node, as the kubelet's projected token would be: the API server then
// tells the agent's requests apart by their node claim.
func agentToken(ctx context.Context, cs kubernetes.Interface, node string) (string, error) {
	req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		ExpirationSeconds: new(int64(7 * 24 * 3600)),
		BoundObjectRef:    &authenticationv1.BoundObjectReference{Kind: "Node", APIVersion: "v1", Name: node},
	}}
	n, err := cs.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
	if err != nil {
		return "", err
	}
	req.Spec.BoundObjectRef.UID = n.UID
	resp, err := cs.CoreV1().ServiceAccounts(Namespace).CreateToken(ctx, "routemode-agent", req, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("issuing node %s's agent a token: %w", node, err)
	}
	return resp.Status.Token, nil
}

// serviceAccountToken issues an unbound token, for the operator.
func serviceAccountToken(ctx context.Context, cs kubernetes.Interface, sa string) (string, error) {
	req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: new(int64(7 * 24 * 3600))}}
	resp, err := cs.CoreV1().ServiceAccounts(Namespace).CreateToken(ctx, sa, req, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("issuing %s a token: %w", sa, err)
	}
	return resp.Status.Token, nil
}

// ensureServiceAccounts creates the namespace and the service accounts the
// RBAC in config/rbac binds.
func ensureServiceAccounts(ctx context.Context, cs kubernetes.Interface) error {
	_, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: Namespace}}, metav1.CreateOptions{})
	if err != nil && !isExists(err) {
		return err
	}
	for _, sa := range []string{"routemode-agent", "routemode-operator"} {
		_, err := cs.CoreV1().ServiceAccounts(Namespace).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{})
		if err != nil && !isExists(err) {
			return err
		}
	}
	return nil
}
