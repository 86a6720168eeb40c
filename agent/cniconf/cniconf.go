// Package cniconf is the contract between the agent and the routemode CNI
// plugin: the agent renders the node's network configuration list into the
// CNI configuration directory, the container runtime hands the plugin's
// entry to the plugin on stdin, and the plugin parses and validates it here.
//
// The plugin entry carries everything the plugin needs and nothing it must
// look up elsewhere:
//
//	{
//	  "cniVersion": "1.0.0",
//	  "cniVersions": ["1.0.0", "1.1.0"],
//	  "name": "routemode",
//	  "plugins": [{
//	    "type": "routemode-cni",
//	    "podCIDR": "10.0.0.0/24",      // this node's pod CIDR
//	    "routerIP": "10.0.0.1",        // pods' gateway, first address of podCIDR
//	    "deviceMTU": 1500,             // pod and lxc link MTU (underlay MTU)
//	    "routeMTU": 1450,              // pod default route MTU (mode dependent)
//	    "endpointDir": "/var/run/routemode/endpoints",
//	    "ipamDir": "/var/lib/routemode/ipam"
//	  }]
//	}
package cniconf

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
)

const (
	// PluginType is the plugin binary's name, the "type" of its entry.
	PluginType = "routemode-cni"
	// NetworkName names the network.
	NetworkName = "routemode"
	// FileName is the configuration list the agent writes; the 05 prefix
	// sorts it before most other CNI configurations.
	FileName = "05-routemode.conflist"
	// CNIVersion is the spec version the agent writes for runtimes that
	// read only cniVersion (libcni before 1.2).
	CNIVersion = "1.0.0"
	// MinMTU is IPv4's minimum link MTU.
	MinMTU = 576
)

// CNIVersions are the spec versions the configuration list offers: a
// runtime picks the highest it speaks, and 1.1.0 gives it GC and STATUS.
var CNIVersions = []string{"1.0.0", "1.1.0"}

// Config is a validated plugin configuration.
type Config struct {
	PodCIDR     netip.Prefix
	RouterIP    netip.Addr
	DeviceMTU   int
	RouteMTU    int
	EndpointDir string
	IPAMDir     string
}

// pluginEntry is the JSON of routemode's own keys.
type pluginEntry struct {
	Type        string `json:"type"`
	PodCIDR     string `json:"podCIDR"`
	RouterIP    string `json:"routerIP"`
	DeviceMTU   int    `json:"deviceMTU"`
	RouteMTU    int    `json:"routeMTU"`
	EndpointDir string `json:"endpointDir"`
	IPAMDir     string `json:"ipamDir"`
}

// NetConf is what the plugin reads on stdin: the standard keys plus
// routemode's.
type NetConf struct {
	types.PluginConf
	PodCIDR     string `json:"podCIDR"`
	RouterIP    string `json:"routerIP"`
	DeviceMTU   int    `json:"deviceMTU"`
	RouteMTU    int    `json:"routeMTU"`
	EndpointDir string `json:"endpointDir"`
	IPAMDir     string `json:"ipamDir"`
}

// Parse decodes and validates the plugin's stdin. Errors are *types.Error
// with a CNI error code and a message that names the offending key.
func Parse(stdin []byte) (*NetConf, Config, error) {
	var n NetConf
	if len(bytes.TrimSpace(stdin)) == 0 {
		return nil, Config{}, types.NewError(types.ErrDecodingFailure, "empty network configuration on stdin", "")
	}
	if err := json.Unmarshal(stdin, &n); err != nil {
		return nil, Config{}, types.NewError(types.ErrDecodingFailure, "network configuration is not valid JSON: "+err.Error(), "")
	}
	c, err := n.validate()
	if err != nil {
		return nil, Config{}, types.NewError(types.ErrInvalidNetworkConfig, err.Error(), "")
	}
	return &n, c, nil
}

func (n *NetConf) validate() (Config, error) {
	var c Config
	missing := func(key string) error {
		return fmt.Errorf("%s is missing from the routemode network configuration (the routemode agent writes it into %s)", key, FileName)
	}
	if n.PodCIDR == "" {
		return c, missing("podCIDR")
	}
	p, err := netip.ParsePrefix(n.PodCIDR)
	if err != nil {
		return c, fmt.Errorf("podCIDR %q is not a CIDR: %v", n.PodCIDR, err)
	}
	if !p.Addr().Is4() || p != p.Masked() || p.Bits() < 16 || p.Bits() > 29 {
		return c, fmt.Errorf("podCIDR %q must be an IPv4 network address with a prefix length from /16 to /29, e.g. 10.0.0.0/24", n.PodCIDR)
	}
	c.PodCIDR = p
	if n.RouterIP == "" {
		return c, missing("routerIP")
	}
	r, err := netip.ParseAddr(n.RouterIP)
	if err != nil {
		return c, fmt.Errorf("routerIP %q is not an IP address: %v", n.RouterIP, err)
	}
	if !p.Contains(r) {
		return c, fmt.Errorf("routerIP %s is outside podCIDR %s", r, p)
	}
	c.RouterIP = r
	if n.DeviceMTU == 0 {
		return c, missing("deviceMTU")
	}
	if n.RouteMTU == 0 {
		return c, missing("routeMTU")
	}
	if n.DeviceMTU < MinMTU || n.DeviceMTU > 65535 {
		return c, fmt.Errorf("deviceMTU %d is outside %d..65535", n.DeviceMTU, MinMTU)
	}
	if n.RouteMTU < MinMTU || n.RouteMTU > n.DeviceMTU {
		return c, fmt.Errorf("routeMTU %d must be from %d to deviceMTU (%d)", n.RouteMTU, MinMTU, n.DeviceMTU)
	}
	c.DeviceMTU, c.RouteMTU = n.DeviceMTU, n.RouteMTU
	if n.EndpointDir == "" {
		return c, missing("endpointDir")
	}
	if n.IPAMDir == "" {
		return c, missing("ipamDir")
	}
	if !filepath.IsAbs(n.EndpointDir) || !filepath.IsAbs(n.IPAMDir) {
		return c, fmt.Errorf("endpointDir %q and ipamDir %q must be absolute paths", n.EndpointDir, n.IPAMDir)
	}
	c.EndpointDir, c.IPAMDir = n.EndpointDir, n.IPAMDir
	return c, nil
}

// Validate checks c as Parse would.
func (c Config) Validate() error {
	n := NetConf{PodCIDR: c.PodCIDR.String(), RouterIP: c.RouterIP.String(), DeviceMTU: c.DeviceMTU,
		RouteMTU: c.RouteMTU, EndpointDir: c.EndpointDir, IPAMDir: c.IPAMDir}
	if !c.PodCIDR.IsValid() {
		n.PodCIDR = ""
	}
	if !c.RouterIP.IsValid() {
		n.RouterIP = ""
	}
	_, err := n.validate()
	return err
}

// Render is the configuration list for c.
func Render(c Config) ([]byte, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	list := struct {
		CNIVersion  string        `json:"cniVersion"`
		CNIVersions []string      `json:"cniVersions"`
		Name        string        `json:"name"`
		Plugins     []pluginEntry `json:"plugins"`
	}{
		CNIVersion:  CNIVersion,
		CNIVersions: CNIVersions,
		Name:        NetworkName,
		Plugins: []pluginEntry{{
			Type: PluginType, PodCIDR: c.PodCIDR.String(), RouterIP: c.RouterIP.String(),
			DeviceMTU: c.DeviceMTU, RouteMTU: c.RouteMTU, EndpointDir: c.EndpointDir, IPAMDir: c.IPAMDir,
		}},
	}
	b, err := json.MarshalIndent(list, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// PluginStdin is what a current runtime (libcni 1.2 or later) passes the
// plugin for configuration list b: the plugin's entry with the list's name
// and the highest of its cniVersion and cniVersions (prevResult, for CHECK
// and DEL, is added by the caller).
func PluginStdin(list []byte) ([]byte, error) {
	var l struct {
		CNIVersion  string            `json:"cniVersion"`
		CNIVersions []string          `json:"cniVersions"`
		Name        string            `json:"name"`
		Plugins     []json.RawMessage `json:"plugins"`
	}
	if err := json.Unmarshal(list, &l); err != nil {
		return nil, err
	}
	for _, v := range l.CNIVersions {
		if l.CNIVersion == "" {
			l.CNIVersion = v
			continue
		}
		if newer, err := version.GreaterThan(v, l.CNIVersion); err != nil {
			return nil, fmt.Errorf("cniVersions: %w", err)
		} else if newer {
			l.CNIVersion = v
		}
	}
	if len(l.Plugins) != 1 {
		return nil, fmt.Errorf("configuration list has %d plugins, want 1", len(l.Plugins))
	}
	var m map[string]any
	if err := json.Unmarshal(l.Plugins[0], &m); err != nil {
		return nil, err
	}
	m["cniVersion"], m["name"] = l.CNIVersion, l.Name
	return json.Marshal(m)
}

// Write renders c into dir/FileName atomically; changed is false when the
// file already held exactly this content.
func Write(dir string, c Config) (changed bool, err error) {
	b, err := Render(c)
	if err != nil {
		return false, err
	}
	path := filepath.Join(dir, FileName)
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, b) {
		return false, nil
	} else if err != nil && !errors.Is(err, os.ErrNotExist) {
		return false, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return false, err
	}
	tmp, err := os.CreateTemp(dir, ".routemode-*.tmp")
	if err != nil {
		return false, err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return false, err
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return false, err
	}
	if err := tmp.Close(); err != nil {
		return false, err
	}
	return true, os.Rename(tmp.Name(), path)
}

// Read parses dir/FileName back into a Config.
func Read(dir string) (Config, error) {
	b, err := os.ReadFile(filepath.Join(dir, FileName))
	if err != nil {
		return Config{}, err
	}
	stdin, err := PluginStdin(b)
	if err != nil {
		return Config{}, err
	}
	_, c, err := Parse(stdin)
	return c, err
}
