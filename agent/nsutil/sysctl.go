package nsutil

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containernetworking/plugins/pkg/ns"
)

// ProcSys is where sysctls are written. In a container /proc/sys is
// read-only; the DaemonSet mounts the host's /proc/sys/net under
// /host/proc/sys/net and the agent's --proc-sys flag points here. Writes
// through it still reach the writing thread's network namespace: net
// sysctls resolve against the caller's namespace, not the mount's.
var ProcSys = "/proc/sys"

// SysctlPath is the /proc/sys file of key, written with slashes or dots
// ("net/ipv4/conf/eth0/rp_filter" or "net.ipv4.ip_forward"). Dots in the
// device part of a dotted key are not supported; use slashes for those.
func SysctlPath(key string) string {
	if !strings.Contains(key, "/") {
		key = strings.ReplaceAll(key, ".", "/")
	}
	return filepath.Join(ProcSys, key)
}

// ReadSysctl reads key in namespace n (nil: the caller's namespace).
func ReadSysctl(n ns.NetNS, key string) (string, error) {
	var out string
	err := do(n, func() error {
		b, err := os.ReadFile(SysctlPath(key))
		if err != nil {
			return err
		}
		out = strings.TrimSpace(string(b))
		return nil
	})
	return out, err
}

// WriteSysctl writes value to key in namespace n (nil: the caller's).
func WriteSysctl(n ns.NetNS, key, value string) error {
	return do(n, func() error {
		if err := os.WriteFile(SysctlPath(key), []byte(value), 0o644); err != nil {
			return fmt.Errorf("writing sysctl %s=%s: %w", key, value, err)
		}
		return nil
	})
}

// SysctlSet is one sysctl write.
type SysctlSet struct {
	Key, Value string
}

// WriteSysctls writes all of sets in n with one namespace switch.
func WriteSysctls(n ns.NetNS, sets []SysctlSet) error {
	return do(n, func() error {
		for _, s := range sets {
			if err := os.WriteFile(SysctlPath(s.Key), []byte(s.Value), 0o644); err != nil {
				return fmt.Errorf("writing sysctl %s=%s: %w", s.Key, s.Value, err)
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
