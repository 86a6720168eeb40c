// Package endpoint is the record of the pods wired on a node. The CNI plugin
// writes one JSON file per pod interface into a state directory when it
// wires the pod and removes it on DEL; the agent lists the directory to
// update pod route MTUs and to hand the endpoints to host routing (the BPF
// endpoint map and `routemodectl bpf endpoint list` need the IP, id,
// ifindex, pod MAC and node-side MAC).
//
// Layout: <dir>/<containerID>_<ifName>.json, written to a temporary file
// and renamed, so readers never see a partial record.
package endpoint

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// LXCPrefix starts the name of every host-side pod veth.
const LXCPrefix = "lxc"

// Endpoint is one pod interface wired by routemode.
type Endpoint struct {
	// ID is a node-unique number for the endpoint: the low 16 bits of its
	// IP, unique because a podCIDR is never larger than a /16.
	ID uint16 `json:"id"`
	// ContainerID and IfName identify the CNI attachment.
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifName"`
	// IP is the pod's address (a /32 on the pod's interface).
	IP netip.Addr `json:"ip"`
	// NetNS is the path of the pod's network namespace.
	NetNS string `json:"netns"`
	// LXCName and LXCIndex name the host side of the pod's veth.
	LXCName  string `json:"lxcName"`
	LXCIndex int    `json:"lxcIfindex"`
	// LXCMAC is the host side's MAC (Cilium's "nodemac").
	LXCMAC string `json:"lxcMAC"`
	// PodMAC is the MAC of the pod's interface.
	PodMAC string `json:"podMAC"`
}

// IDFor is the endpoint ID of ip.
func IDFor(ip netip.Addr) uint16 {
	b := ip.As4()
	return uint16(b[2])<<8 | uint16(b[3])
}

// LXCName is the host-side veth name of an attachment: "lxc" and 12 hex
// digits of a hash of container ID and interface name, 15 characters, the
// kernel's limit. It is deterministic so DEL finds the device without a
// record.
func LXCName(containerID, ifName string) string {
	sum := sha256.Sum256([]byte(containerID + "/" + ifName))
	return LXCPrefix + hex.EncodeToString(sum[:])[:12]
}

// Store reads and writes endpoint records in a directory.
type Store struct {
	Dir string
}

func fileName(containerID, ifName string) string {
	clean := func(s string) string {
		return strings.Map(func(r rune) rune {
			switch {
			case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '.':
				return r
			}
			return '_'
		}, s)
	}
	return clean(containerID) + "_" + clean(ifName) + ".json"
}

func (s Store) path(containerID, ifName string) string {
	return filepath.Join(s.Dir, fileName(containerID, ifName))
}

// Put writes e atomically.
func (s Store) Put(e Endpoint) error {
	if err := os.MkdirAll(s.Dir, 0o755); err != nil {
		return err
	}
	b, err := json.MarshalIndent(e, "", "  ")
	if err != nil {
		return err
	}
	final := s.path(e.ContainerID, e.IfName)
	tmp, err := os.CreateTemp(s.Dir, ".tmp-*")
	if err != nil {
		return err
	}
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return err
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	if err := os.Rename(tmp.Name(), final); err != nil {
		os.Remove(tmp.Name())
		return err
	}
	return nil
}

// Get reads the record of an attachment; ok is false when there is none.
func (s Store) Get(containerID, ifName string) (e Endpoint, ok bool, err error) {
	b, err := os.ReadFile(s.path(containerID, ifName))
	if errors.Is(err, os.ErrNotExist) {
		return Endpoint{}, false, nil
	}
	if err != nil {
		return Endpoint{}, false, err
	}
	if err := json.Unmarshal(b, &e); err != nil {
		return Endpoint{}, false, fmt.Errorf("endpoint record %s: %w", s.path(containerID, ifName), err)
	}
	return e, true, nil
}

// Delete removes the record of an attachment; a missing record is fine.
func (s Store) Delete(containerID, ifName string) error {
	err := os.Remove(s.path(containerID, ifName))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}

// List returns every record, sorted by IP. A missing directory is empty;
// unreadable records are skipped and reported in the error, with the
// readable ones still returned.
func (s Store) List() ([]Endpoint, error) {
	entries, err := os.ReadDir(s.Dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var (
		out  []Endpoint
		errs []error
	)
	for _, de := range entries {
		if de.IsDir() || !strings.HasSuffix(de.Name(), ".json") || strings.HasPrefix(de.Name(), ".") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(s.Dir, de.Name()))
		if errors.Is(err, os.ErrNotExist) {
			continue // removed by a concurrent DEL
		}
		var e Endpoint
		if err == nil {
			err = json.Unmarshal(b, &e)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("endpoint record %s: %w", de.Name(), err))
			continue
		}
		out = append(out, e)
	}
	slices.SortFunc(out, func(a, b Endpoint) int { return a.IP.Compare(b.IP) })
	return out, errors.Join(errs...)
}
