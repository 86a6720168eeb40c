/*
Copyright 2026 The routemode Authors.

Licensed under the Apache License, Version 2.0.
*/

// Package prototype is datapath.md 7.1's hand-built eBPF host-routing
// prototype, rebuilt from its description for the datapath benchmark's
// side-by-side comparison. It is not part of routemode's datapath.
package prototype

//go:generate go tool bpf2go -target bpfel -tags linux -go-package prototype -cflags "-O2 -g -Wall -Werror" prototype prototype.c -- -I../include
