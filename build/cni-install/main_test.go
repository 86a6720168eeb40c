package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

func TestInstallReplacesRunningBinary(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin")
	src := filepath.Join(dir, "routemode-cni")
	if err := os.WriteFile(src, []byte("#!/bin/sh\necho new\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// An old plugin that is being executed while it is replaced: writing
	// into it in place would fail with ETXTBSY.
	if err := os.MkdirAll(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	old := filepath.Join(bin, "routemode-cni")
	if err := os.WriteFile(old, []byte("#!/bin/sh\nsleep 5\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	running := exec.Command(old)
	if err := running.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = running.Process.Kill(); _ = running.Wait() })

	got, err := install(src, bin)
	if err != nil {
		t.Fatalf("install: %v", err)
	}
	if got != old {
		t.Errorf("installed at %s, want %s", got, old)
	}
	st, err := os.Stat(old)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o755 {
		t.Errorf("mode %v, want 0755", st.Mode().Perm())
	}
	out, err := exec.Command(old).Output()
	if err != nil || !bytes.Equal(out, []byte("new\n")) {
		t.Errorf("installed plugin printed %q, %v; want \"new\\n\"", out, err)
	}
	entries, err := os.ReadDir(bin)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		t.Errorf("leftovers in %s: %v", bin, entries)
	}
}

func TestInstallMissingSource(t *testing.T) {
	if _, err := install(filepath.Join(t.TempDir(), "absent"), t.TempDir()); err == nil {
		t.Fatal("install of a missing binary succeeded")
	}
}
