package nsutil

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containernetworking/plugins/pkg/ns"
)

// DefaultProcSys is /proc/sys as a process with its own view of it sees it.
const DefaultProcSys = "/proc/sys"

// Sysctls reads and writes sysctls through one /proc/sys mount. In a
// container /proc/sys is read-only: the DaemonSet mounts the host's
// /proc/sys/net under /host/proc/sys/net and the agent's --proc-sys flag
// points there. Writes through it still reach the writing thread's
// network namespace: net sysctls resolve against the caller's namespace,
// not the mount's.
type Sysctls struct {
	// ProcSys is the mount; "" means DefaultProcSys.
	ProcSys string
}

// Path is the file of key, written with slashes or dots
// ("net/ipv4/conf/eth0/rp_filter" or "net.ipv4.ip_forward"). Dots in the
// device part of a dotted key are not supported; use slashes for those.
func (s Sysctls) Path(key string) string {
	if !strings.Contains(key, "/") {
		key = strings.ReplaceAll(key, ".", "/")
	}
	root := s.ProcSys
	if root == "" {
		root = DefaultProcSys
	}
	return filepath.Join(root, key)
}

// Read reads key in namespace n (nil: the caller's namespace).
func (s Sysctls) Read(n ns.NetNS, key string) (string, error) {
	var out string
	err := do(n, func() error {
		b, err := os.ReadFile(s.Path(key))
		if err != nil {
			return err
		}
		out = strings.TrimSpace(string(b))
		return nil
	})
	return out, err
}

// Write writes value to key in namespace n (nil: the caller's).
func (s Sysctls) Write(n ns.NetNS, key, value string) error {
	return s.WriteAll(n, []SysctlSet{{Key: key, Value: value}})
}

// SysctlSet is one sysctl write.
type SysctlSet struct {
	Key, Value string
}

// WriteAll writes all of sets in n with one namespace switch.
func (s Sysctls) WriteAll(n ns.NetNS, sets []SysctlSet) error {
	return do(n, func() error {
		for _, set := range sets {
			if err := os.WriteFile(s.Path(set.Key), []byte(set.Value), 0o644); err != nil {
				return fmt.Errorf("writing sysctl %s=%s: %w", set.Key, set.Value, err)
			}
		}
		return nil
	})
}

func do(n ns.NetNS, fn func() error) error {
	if n == nil {
		return fn()
	}
	return n.Do(func(ns.NetNS) error { return fn() })
}
