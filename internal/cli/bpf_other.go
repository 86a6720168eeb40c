//go:build !linux

package cli

import "errors"

func listPinnedEndpoints(string) ([]endpoint, error) {
	return nil, errors.New("bpf endpoint list reads a Linux node's bpffs: run it on the node")
}

func listPinnedMetrics(string) ([]metric, error) {
	return nil, errors.New("bpf metrics list reads a Linux node's bpffs: run it on the node")
}

func listPinnedDirectRoutes(string) ([]directRoute, error) {
	return nil, errors.New("bpf route list reads a Linux node's bpffs: run it on the node")
}
