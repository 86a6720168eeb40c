//go:build !linux

package cli

import "errors"

func openPinnedMonitor(string) (eventSource, error) {
	return nil, errors.New("monitor reads a Linux node's eBPF programs: run it on the node")
}

func interfaceName(int) (string, error) {
	return "", errors.New("interface names are the node's")
}
