package netlab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"

	"github.com/routemode/routemode/agent/cniconf"
)

const cniDirPrefix = "cni-"

var cniBuild struct {
	once sync.Once
	dir  string
	err  error
}

// BuildCNI builds cmd/routemode-cni once per process and returns its
// directory (the CNI_PATH). The directory is named after the process, so
// Sweep removes it once the process is gone.
func BuildCNI() (string, error) {
	cniBuild.once.Do(func() {
		dir := filepath.Join(StateRoot, cniDirPrefix+strconv.Itoa(os.Getpid()))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			cniBuild.err = err
			return
		}
		cmd := exec.Command("go", "build", "-o", filepath.Join(dir, "routemode-cni"), "github.com/routemode/routemode/cmd/routemode-cni")
		if out, err := cmd.CombinedOutput(); err != nil {
			cniBuild.err = fmt.Errorf("building the CNI plugin: %w\n%s", err, out)
			return
		}
		cniBuild.dir = dir
	})
	return cniBuild.dir, cniBuild.err
}

// CNIResult is one plugin run.
type CNIResult struct {
	Stdout, Stderr []byte
	ExitCode       int
}

// CNI runs the plugin binary in the node's namespace (`ip netns exec`),
// as a container runtime would, with stdin as the network configuration.
func (n *Node) CNI(ctx context.Context, command, containerID, netnsPath, ifName string, stdin []byte) (CNIResult, error) {
	if n.Lab.CNIBin == "" {
		return CNIResult{}, errors.New("lab built without the CNI plugin")
	}
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", n.NSName, filepath.Join(n.Lab.CNIBin, "routemode-cni"))
	cmd.Env = []string{
		"CNI_COMMAND=" + command,
		"CNI_CONTAINERID=" + containerID,
		"CNI_NETNS=" + netnsPath,
		"CNI_IFNAME=" + ifName,
		"CNI_PATH=" + n.Lab.CNIBin,
		"PATH=" + os.Getenv("PATH"),
	}
	cmd.Stdin = bytes.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	res := CNIResult{Stdout: out.Bytes(), Stderr: errb.Bytes()}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		res.ExitCode = ee.ExitCode()
		return res, nil
	}
	if err != nil {
		return res, fmt.Errorf("running the CNI plugin: %w", err)
	}
	return res, nil
}

// PluginStdin is the network configuration the node's agent wrote, as a
// runtime hands it to the plugin.
func (n *Node) PluginStdin() ([]byte, error) {
	b, err := os.ReadFile(filepath.Join(n.CNIConfDir, cniconf.FileName))
	if err != nil {
		return nil, fmt.Errorf("reading the CNI configuration the agent wrote: %w", err)
	}
	return cniconf.PluginStdin(b)
}
