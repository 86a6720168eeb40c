// Command images builds routemode's container images without a container
// engine and pushes them (make images, make push):
//
//	go run ./hack/images build -dir bin/images -tag v0.1.0
//	go run ./hack/images push -dir bin/images -registry registry.example.com/routemode -tag v0.1.0
//	go run ./hack/images single -bin bin/node/pause -path /pause -ref registry.k8s.io/pause:3.10.2 -out bin/node/images/pause.tar
//
// build compiles the binaries the way the Dockerfile does (static,
// -trimpath, no VCS stamp) and writes one image archive per image,
// <dir>/<repository>.tar, tagged <registry>/<repository>:<tag>: the
// operator's, the agent's and the real-node lab's workload (routemode-echo);
// push pushes the first two.
//
// single writes an image archive of one static binary built elsewhere, the
// way build writes routemode's: the lab's pause image and test workloads.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/routemode/routemode/internal/images"
)

const usage = `usage:
  images build [-dir DIR] [-registry REGISTRY] [-tag TAG] [-arch ARCH]
  images push  -registry REGISTRY [-dir DIR] [-tag TAG]
  images single -bin FILE -path PATH -ref REF -out FILE [-user UID:GID] [-arch ARCH]`

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "images:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) == 0 {
		return errors.New(usage)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	fs := flag.NewFlagSet(args[0], flag.ContinueOnError)
	dir := fs.String("dir", "bin/images", "directory of the image archives")
	registry := fs.String("registry", "ghcr.io/routemode", "registry and path the images are named under")
	tag := fs.String("tag", "v0.1.0", "image tag")
	arch := fs.String("arch", runtime.GOARCH, "CPU architecture (GOARCH) to build for")
	bin := fs.String("bin", "", "single: the static binary")
	at := fs.String("path", "", "single: where the image holds the binary, also its entrypoint")
	ref := fs.String("ref", "", "single: the image reference the archive is tagged with")
	out := fs.String("out", "", "single: the archive to write")
	user := fs.String("user", "65535:65535", "single: uid:gid the image runs as")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	switch args[0] {
	case "build":
		return build(ctx, *dir, *registry, *tag, *arch)
	case "push":
		return push(ctx, *dir, *registry, *tag)
	case "single":
		return single(*bin, *at, *ref, *out, *user, *arch)
	default:
		return fmt.Errorf("unknown command %q\n%s", args[0], usage)
	}
}

func build(ctx context.Context, dir, registry, tag, arch string) error {
	epoch, err := images.Epoch()
	if err != nil {
		return err
	}
	bin, err := os.MkdirTemp("", "routemode-images-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(bin)
	// The Dockerfile's build stage, flag for flag.
	specs := append(slices.Clone(images.All), images.Echo)
	args := append([]string{"build", "-trimpath", "-ldflags=-s -w", "-o", bin + "/"}, images.Packages(specs...)...)
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+arch, "GOFLAGS=-buildvcs=false")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go %v: %w", args, err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for _, spec := range specs {
		ref, err := images.Ref(registry, spec, tag)
		if err != nil {
			return err
		}
		img, err := images.Build(spec, bin, arch, epoch)
		if err != nil {
			return err
		}
		path := filepath.Join(dir, spec.Repository+".tar")
		if err := images.WriteArchive(path, ref, img); err != nil {
			return fmt.Errorf("writing %s: %w", path, err)
		}
		digest, err := img.Digest()
		if err != nil {
			return err
		}
		fmt.Printf("%s\t%s\t%s\n", path, ref, digest)
	}
	return nil
}

func push(ctx context.Context, dir, registry, tag string) error {
	for _, spec := range images.All {
		img, err := images.ReadArchive(filepath.Join(dir, spec.Repository+".tar"))
		if err != nil {
			return fmt.Errorf("%w (run `make images` first)", err)
		}
		ref, err := images.Ref(registry, spec, tag)
		if err != nil {
			return err
		}
		if err := images.Push(ctx, ref, img); err != nil {
			return err
		}
		digest, err := img.Digest()
		if err != nil {
			return err
		}
		fmt.Printf("%s@%s\n", ref, digest)
	}
	return nil
}

func single(bin, at, ref, out, user, arch string) error {
	if bin == "" || at == "" || ref == "" || out == "" {
		return errors.New("single needs -bin, -path, -ref and -out")
	}
	tag, err := name.NewTag(ref)
	if err != nil {
		return fmt.Errorf("-ref %q: %w", ref, err)
	}
	epoch, err := images.Epoch()
	if err != nil {
		return err
	}
	spec := images.Spec{Repository: tag.RepositoryStr(), Files: []images.File{{Path: at, Package: filepath.Base(bin)}},
		Entrypoint: []string{at}, User: user}
	img, err := images.Build(spec, filepath.Dir(bin), arch, epoch)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return err
	}
	if err := images.WriteArchive(out, tag, img); err != nil {
		return fmt.Errorf("writing %s: %w", out, err)
	}
	fmt.Printf("%s\t%s\n", out, tag)
	return nil
}
