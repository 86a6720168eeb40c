//go:build !linux

package cli

import (
	"context"
	"errors"
)

func openPinnedMonitor(context.Context, string, func()) (eventSource, error) {
	return nil, errors.New("monitor reads a Linux node's eBPF programs: run it on the node")
}

func interfaceName(int) (string, error) {
	return "", errors.New("interface names are the node's")
}
