package podnet

import (
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netns"
)

// nsHandle views an open namespace as a netns handle without taking
// ownership of its descriptor.
func nsHandle(n ns.NetNS) netns.NsHandle { return netns.NsHandle(int(n.Fd())) }
