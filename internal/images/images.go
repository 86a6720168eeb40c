// Package images builds routemode's container images without a container
// engine: each image is one layer holding the project's static binaries at
// the paths the Dockerfile puts them, on an empty base, written as an image
// archive that `ctr images import`, `kind load image-archive` and
// `docker load` take, or pushed to a registry.
//
// Builds are reproducible: every file in the layer has the same owner,
// mode and modification time (SOURCE_DATE_EPOCH, or the Unix epoch), and
// entries are sorted, so the same binaries give the same image digest.
package images

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// File is one binary in an image.
type File struct {
	// Path is where the image holds it.
	Path string
	// Package is the Go main package that builds it, relative to the
	// repository root; for a binary built otherwise (the pause image's
	// static C program), its path relative to the build's binary directory.
	Package string
}

// Binary is the name `go build -o dir/` gives the file.
func (f File) Binary() string { return path.Base(f.Package) }

// Spec is one image: its repository name, its files and how it runs.
type Spec struct {
	// Repository is the image's name under a registry, e.g. routemode-agent.
	Repository string
	Files      []File
	Entrypoint []string
	// User is uid:gid.
	User string
}

// The two images, as the Dockerfile's operator and agent stages describe
// them; config's Dockerfile test keeps the two in step.
var (
	Operator = Spec{
		Repository: "routemode-operator",
		Files:      []File{{Path: "/usr/local/bin/routemode-operator", Package: "./cmd/routemode-operator"}},
		Entrypoint: []string{"/usr/local/bin/routemode-operator"},
		// The operator only talks to the API server: not root.
		User: "65532:65532",
	}
	Agent = Spec{
		Repository: "routemode-agent",
		Files: []File{
			{Path: "/usr/local/bin/routemode-agent", Package: "./cmd/routemode-agent"},
			{Path: "/usr/local/bin/cni-install", Package: "./build/cni-install"},
			{Path: "/usr/local/bin/routemodectl", Package: "./cmd/routemodectl"},
			{Path: "/opt/routemode/cni/routemode-cni", Package: "./cmd/routemode-cni"},
		},
		Entrypoint: []string{"/usr/local/bin/routemode-agent"},
		User:       "0:0",
	}
	All = []Spec{Operator, Agent}
	// Echo is the real-node lab's workload (hack/lab/routemode-echo), a
	// Deployment behind a ClusterIP Service and its client: built with
	// the others, but not routemode's, so neither in All nor pushed.
	Echo = Spec{
		Repository: "routemode-echo",
		Files:      []File{{Path: "/usr/local/bin/routemode-echo", Package: "./hack/lab/routemode-echo"}},
		Entrypoint: []string{"/usr/local/bin/routemode-echo"},
		User:       "65532:65532",
	}
)

// Packages lists the Go packages the specs need built.
func Packages(specs ...Spec) []string {
	var out []string
	for _, s := range specs {
		for _, f := range s.Files {
			if !slices.Contains(out, f.Package) {
				out = append(out, f.Package)
			}
		}
	}
	return out
}

// Epoch is the modification time of every file and the image's creation
// time: SOURCE_DATE_EPOCH when set (reproducible-builds.org), else 0.
func Epoch() (time.Time, error) {
	v := os.Getenv("SOURCE_DATE_EPOCH")
	if v == "" {
		return time.Unix(0, 0).UTC(), nil
	}
	var sec int64
	if _, err := fmt.Sscan(v, &sec); err != nil {
		return time.Time{}, fmt.Errorf("SOURCE_DATE_EPOCH=%q is not a number of seconds: %w", v, err)
	}
	return time.Unix(sec, 0).UTC(), nil
}

// Build makes spec's image from the binaries in binDir (named as
// `go build -o binDir/` names them) for linux/arch.
func Build(spec Spec, binDir, arch string, epoch time.Time) (v1.Image, error) {
	layer, err := buildLayer(spec, binDir, epoch)
	if err != nil {
		return nil, fmt.Errorf("image %s: %w", spec.Repository, err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", arch
	cf.Created = v1.Time{Time: epoch}
	cf.Config.Entrypoint = spec.Entrypoint
	cf.Config.User = spec.User
	cf.Config.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	cf.History = []v1.History{{Created: v1.Time{Time: epoch}, CreatedBy: "routemode images: " + spec.Repository}}
	return mutate.ConfigFile(img, cf)
}

// buildLayer writes the layer's tar in memory: the binaries are tens of
// megabytes, and a byte slice can be opened again for digesting and writing.
func buildLayer(spec Spec, binDir string, epoch time.Time) (v1.Layer, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dirs := map[string]bool{}
	files := slices.Clone(spec.Files)
	slices.SortFunc(files, func(a, b File) int { return strings.Compare(a.Path, b.Path) })
	// /tmp exists in every base image users know; programs that need a
	// scratch file expect it.
	if err := writeDir(tw, "tmp", 0o1777, epoch); err != nil {
		return nil, err
	}
	for _, f := range files {
		if !path.IsAbs(f.Path) {
			return nil, fmt.Errorf("file path %q is not absolute", f.Path)
		}
		rel := strings.TrimPrefix(f.Path, "/")
		var parents []string
		for d := path.Dir(rel); d != "."; d = path.Dir(d) {
			parents = append([]string{d}, parents...)
		}
		for _, d := range parents {
			if dirs[d] {
				continue
			}
			dirs[d] = true
			if err := writeDir(tw, d, 0o755, epoch); err != nil {
				return nil, err
			}
		}
		b, err := os.ReadFile(filepath.Join(binDir, f.Binary()))
		if err != nil {
			return nil, fmt.Errorf("%s (build %s first): %w", f.Path, f.Package, err)
		}
		hdr := &tar.Header{Typeflag: tar.TypeReg, Name: rel, Mode: 0o755, Size: int64(len(b)), ModTime: epoch, Format: tar.FormatPAX}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, err
		}
		if _, err := tw.Write(b); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	data := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil })
}

func writeDir(tw *tar.Writer, name string, mode int64, epoch time.Time) error {
	return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: mode, ModTime: epoch, Format: tar.FormatPAX})
}

// Ref is spec's image reference under registry (host[/path]) with tag.
func Ref(registry string, spec Spec, tag string) (name.Tag, error) {
	t, err := name.NewTag(strings.TrimSuffix(registry, "/") + "/" + spec.Repository + ":" + tag)
	if err != nil {
		return name.Tag{}, fmt.Errorf("image reference for %s under registry %q with tag %q: %w", spec.Repository, registry, tag, err)
	}
	return t, nil
}

// WriteArchive writes img as an image archive at path, tagged ref.
func WriteArchive(path string, ref name.Tag, img v1.Image) error {
	return tarball.MultiWriteToFile(path, map[name.Tag]v1.Image{ref: img})
}

// ReadArchive loads the one image of the archive at path.
func ReadArchive(path string) (v1.Image, error) {
	img, err := tarball.ImageFromPath(path, nil)
	if err != nil {
		return nil, fmt.Errorf("reading image archive %s: %w", path, err)
	}
	return img, nil
}

// Push writes img to the registry as ref, with the credentials of the
// local keychain (docker login's config), as `docker push` would.
func Push(ctx context.Context, ref name.Tag, img v1.Image) error {
	if err := remote.Write(ref, img, remote.WithContext(ctx), remote.WithAuthFromKeychain(authn.DefaultKeychain)); err != nil {
		return fmt.Errorf("pushing %s: %w", ref, err)
	}
	return nil
}
