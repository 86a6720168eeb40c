/*
Copyright 2026 The routemode Authors.

Licensed under the Apache License, Version 2.0.
*/

// Package prototype is the hand-built eBPF host-routing prototype that
// routemode's programs were set to beat (docs/host-routing.md, "The
// prototype it is measured against"), rebuilt from its description for
// the datapath benchmark's side-by-side comparison. It is not part of routemode's datapath.
package prototype

//go:generate go tool bpf2go -target bpfel -tags linux -go-package prototype -cflags "-O2 -g -Wall -Werror" prototype prototype.c -- -I../include
