/*
Copyright 2026 The routemode Authors.

Licensed under the Apache License, Version 2.0.
*/

// Package bpf holds routemode's eBPF host-routing programs: the C source,
// the bpf2go output committed next to it (so building needs no clang), and
// a small loader that sets the load-time constants.
//
// Regenerate with hack/bpf/generate.sh (make generate-bpf); hack/bpf/verify.sh
// fails when the committed output differs from a fresh build.
package bpf

//go:generate go tool bpf2go -target bpfel -tags linux -go-package bpf -type rm_event -cflags "-O2 -g -Wall -Werror" hostrouting hostrouting.c -- -I./include
