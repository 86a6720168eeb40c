package node

import (
	"errors"
	"net"
)

func parseMAC(s string) (net.HardwareAddr, error) {
	if s == "" {
		return nil, errors.New("empty MAC")
	}
	return net.ParseMAC(s)
}
