package cniplugin_test

import (
	"encoding/json"
	"errors"
	"os"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/routemode/routemode/agent/cniconf"
	"github.com/routemode/routemode/agent/cniplugin"
	"github.com/routemode/routemode/internal/netlab"
)

// commands are the plugin's entry points; the fuzzer picks one by index so
// that every input exercises a command rather than an unknown name, which
// skel refuses before the plugin sees it.
var commands = []struct {
	name string
	fn   func(*skel.CmdArgs) error
}{
	{"ADD", cniplugin.Add}, {"DEL", cniplugin.Del}, {"CHECK", cniplugin.Check},
	{"GC", cniplugin.GC}, {"STATUS", cniplugin.Status},
}

// FuzzPlugin runs the plugin's commands in process, inside a one-node lab,
// with arbitrary stdin, container ID and interface name: what a runtime
// (or anything that can write the CNI configuration) hands the plugin.
// Every outcome must be success or a CNI error with a code and a message,
// never a panic; a successful ADD must be undone by DEL of the same
// attachment. Seeds are in testdata/fuzz/FuzzPlugin.
//
// The kernel it touches is the lab node's and the pod namespace's, never
// the host's: commands run inside the node's namespace (Node.Do), the
// stores a fuzzed stdin names are pinned to the node's, and the pod
// namespace is the lab's, whatever the input says.
func FuzzPlugin(f *testing.F) {
	_, n := oneNode(f)
	good := netlab.MustPluginStdin(f, n)
	_, cfg, err := cniconf.Parse(good)
	if err != nil {
		f.Fatalf("the agent's own configuration does not parse: %v", err)
	}
	podNS := netlab.MustPodNS(f, n, "fuzz")
	f.Add(good, uint8(0), "fuzz-seed", "eth0")

	// ADD prints its result on stdout, as the CNI protocol asks; thousands
	// of them would bury the fuzzer's own report.
	devNull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		f.Fatal(err)
	}
	stdout := os.Stdout
	os.Stdout = devNull
	f.Cleanup(func() { os.Stdout = stdout; devNull.Close() })

	f.Fuzz(func(t *testing.T, stdin []byte, cmd uint8, containerID, ifName string) {
		stdin = pinStores(stdin, cfg)
		c := commands[int(cmd)%len(commands)]
		args := &skel.CmdArgs{ContainerID: containerID, Netns: podNS, IfName: ifName, StdinData: stdin}
		var err error
		if doErr := n.Do(func() error { err = c.fn(args); return nil }); doErr != nil {
			t.Fatalf("entering the node's namespace: %v", doErr)
		}
		if err != nil {
			mustBeCNIError(t, c.name, err)
			return
		}
		if c.name != "ADD" {
			return
		}
		if doErr := n.Do(func() error { err = cniplugin.Del(args); return nil }); doErr != nil {
			t.Fatalf("entering the node's namespace: %v", doErr)
		}
		if err != nil {
			t.Fatalf("DEL after a successful ADD of container %q interface %q: %v", containerID, ifName, err)
		}
	})
}

// pinStores points endpointDir and ipamDir of a JSON object at the lab
// node's stores, so a fuzzed path never makes the plugin write to the
// host's filesystem. Other input is returned as it is: the plugin refuses
// it before touching a file.
func pinStores(stdin []byte, cfg cniconf.Config) []byte {
	var m map[string]any
	if json.Unmarshal(stdin, &m) != nil || m == nil {
		return stdin
	}
	for key, dir := range map[string]string{"endpointDir": cfg.EndpointDir, "ipamDir": cfg.IPAMDir} {
		if _, ok := m[key]; ok {
			m[key] = dir
		}
	}
	out, err := json.Marshal(m)
	if err != nil {
		return stdin
	}
	return out
}

func mustBeCNIError(t *testing.T, cmd string, err error) {
	t.Helper()
	var e *types.Error
	if !errors.As(err, &e) {
		t.Fatalf("%s returned %T %q, not a CNI error with a code", cmd, err, err)
	}
	if e.Code == 0 || e.Msg == "" {
		t.Fatalf("%s returned a CNI error without code or message: %+v", cmd, e)
	}
}
