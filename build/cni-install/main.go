// Command cni-install copies a CNI plugin binary into the host's CNI binary
// directory. It runs as the agent DaemonSet's init container, whose image has
// no shell: `cni-install <plugin> <dir>`.
//
// The copy is written to a temporary file in dir and renamed over the old
// binary, so the container runtime, which may be executing the old binary at
// that moment, sees either the old or the new one, never a partial file, and
// the copy never fails with "text file busy".
package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: cni-install <plugin binary> <CNI bin directory>")
		os.Exit(2)
	}
	dst, err := install(os.Args[1], os.Args[2])
	if err != nil {
		fmt.Fprintln(os.Stderr, "cni-install:", err)
		os.Exit(1)
	}
	fmt.Println("cni-install: installed", dst)
}

// install copies src into dir under its own base name, atomically, and
// returns the installed path.
func install(src, dir string) (string, error) {
	in, err := os.Open(src)
	if err != nil {
		return "", err
	}
	defer in.Close()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	dst := filepath.Join(dir, filepath.Base(src))
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(src)+".tmp-*")
	if err != nil {
		return "", err
	}
	defer os.Remove(tmp.Name()) // after a successful rename, a no-op
	if _, err := io.Copy(tmp, in); err != nil {
		tmp.Close()
		return "", fmt.Errorf("copying %s to %s: %w", src, tmp.Name(), err)
	}
	if err := tmp.Chmod(0o755); err != nil {
		tmp.Close()
		return "", err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return "", err
	}
	if err := tmp.Close(); err != nil {
		return "", err
	}
	if err := os.Rename(tmp.Name(), dst); err != nil {
		return "", err
	}
	return dst, nil
}
