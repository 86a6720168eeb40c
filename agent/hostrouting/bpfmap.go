//go:build linux

/*
Copyright 2026 The routemode Authors.

Licensed under the Apache License, Version 2.0.
*/

package hostrouting

import (
	"errors"
	"fmt"
	"slices"

	"github.com/cilium/ebpf"
)

// readMap reads a whole map, converting its keys with key.
func readMap[K comparable, MK, V any](m *ebpf.Map, key func(MK) K) (map[K]V, error) {
	cur := make(map[K]V)
	var (
		k MK
		v V
	)
	it := m.Iterate()
	for it.Next(&k, &v) {
		cur[key(k)] = v
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read map %s: %w", m, err)
	}
	return cur, nil
}

// diffMap returns the entries to write and the keys to delete to turn cur
// into want, both in cmp order.
func diffMap[K, V comparable](cur, want map[K]V, cmp func(a, b K) int) (put, del []K) {
	for k, v := range want {
		if c, ok := cur[k]; !ok || c != v {
			put = append(put, k)
		}
	}
	for k := range cur {
		if _, ok := want[k]; !ok {
			del = append(del, k)
		}
	}
	slices.SortFunc(put, cmp)
	slices.SortFunc(del, cmp)
	return put, del
}

// mapKey converts between a map's Go-side key K and its in-map form MK.
type mapKey[K comparable, MK any] struct {
	to   func(K) (MK, error)
	from func(MK) K
	cmp  func(a, b K) int
	what string // for errors: "endpoint", "direct route"
}

// syncMap makes m hold exactly want, writing new and changed entries before
// deleting stale ones: an update is a single atomic map write, so a key the
// programs look up is never briefly missing.
func syncMap[K, V comparable, MK any](j *journal, m *ebpf.Map, want map[K]V, mk mapKey[K, MK]) error {
	cur, err := readMap[K, MK, V](m, mk.from)
	if err != nil {
		return err
	}
	put, del := diffMap(cur, want, mk.cmp)
	for _, k := range put {
		key, err := mk.to(k)
		if err != nil {
			return err
		}
		if err := m.Put(key, want[k]); err != nil {
			return fmt.Errorf("write %s %v: %w", mk.what, k, err)
		}
		j.add("%s map: write %v", mk.what, k)
	}
	for _, k := range del {
		key, err := mk.to(k)
		if err != nil {
			return err
		}
		if err := m.Delete(key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete %s %v: %w", mk.what, k, err)
		}
		j.add("%s map: delete %v", mk.what, k)
	}
	return nil
}
