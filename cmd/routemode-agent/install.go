package main

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"

	"github.com/routemode/routemode/agent/cniconf"
)

// installCNI copies the routemode-cni binary into the CNI binary directory
// when it differs from what is there: from --install-cni-from, or from
// beside the agent's own binary (the DaemonSet image ships both).
func installCNI(o options) error {
	if o.cniBinDir == "" {
		return nil
	}
	src := o.installCNIFrom
	if src == "" {
		self, err := os.Executable()
		if err != nil {
			return nil
		}
		src = filepath.Join(filepath.Dir(self), cniconf.PluginType)
		if _, err := os.Stat(src); errors.Is(err, os.ErrNotExist) {
			return nil // nothing to install; the plugin is provisioned otherwise
		}
	}
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	dst := filepath.Join(o.cniBinDir, cniconf.PluginType)
	if old, err := os.ReadFile(dst); err == nil && bytes.Equal(old, b) {
		return nil
	}
	if err := os.MkdirAll(o.cniBinDir, 0o755); err != nil {
		return err
	}
	tmp := dst + ".tmp"
	if err := os.WriteFile(tmp, b, 0o755); err != nil {
		return err
	}
	return os.Rename(tmp, dst)
}
