//go:build linux

/*
Copyright 2026 The routemode Authors.

Licensed under the Apache License, Version 2.0.
*/

package bpf

import (
	"bytes"
	"encoding/binary"
	"fmt"
)

// Event is one decision of a host-routing program, as the programs write it
// into the MapEvents ring buffer while the MapMonitor flag is set.
type Event = hostroutingRmEvent

// ParseEvent decodes a ring buffer record.
func ParseEvent(raw []byte) (Event, error) {
	var e Event
	if err := binary.Read(bytes.NewReader(raw), binary.NativeEndian, &e); err != nil {
		return Event{}, fmt.Errorf("decode monitor event of %d bytes: %w", len(raw), err)
	}
	return e, nil
}

// Packet returns the copied head of the packet.
func (e *hostroutingRmEvent) Packet() []byte {
	return e.Data[:min(int(e.CapLen), len(e.Data))]
}
