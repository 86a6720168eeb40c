//go:build linux

/*
Copyright 2026 The routemode Authors.

Licensed under the Apache License, Version 2.0.
*/

package hostrouting

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// EnsureBPFFS makes sure dir is a directory on bpffs, mounting bpffs at
// BPFFSRoot first if dir lies under it and nothing is mounted there (a bare
// host or a test VM; in a pod the DaemonSet mounts it).
func EnsureBPFFS(dir string) error {
	if !onBPFFS(BPFFSRoot) && (dir == BPFFSRoot || strings.HasPrefix(dir, BPFFSRoot+"/")) {
		if err := os.MkdirAll(BPFFSRoot, 0o755); err != nil {
			return err
		}
		if err := unix.Mount("bpffs", BPFFSRoot, "bpf", 0, "mode=0700"); err != nil && !errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("mount bpffs at %s: %w", BPFFSRoot, err)
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if !onBPFFS(dir) {
		return fmt.Errorf("%s is not on a bpf filesystem", dir)
	}
	return nil
}

func onBPFFS(path string) bool {
	var st unix.Statfs_t
	for p := path; ; p = filepath.Dir(p) {
		if err := unix.Statfs(p, &st); err == nil {
			return st.Type == unix.BPF_FS_MAGIC
		}
		if p == "/" {
			return false
		}
	}
}
