package config_test

import (
	"debug/elf"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/routemode/routemode/internal/images"
)

// dockerfile is the repository's Dockerfile with line continuations joined.
type dockerfile struct {
	lines []string
}

func readDockerfile(t *testing.T) dockerfile {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	var d dockerfile
	cur := ""
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(strings.TrimSpace(l), "#") {
			continue
		}
		if c, ok := strings.CutSuffix(l, "\\"); ok {
			cur += c + " "
			continue
		}
		cur += l
		if strings.TrimSpace(cur) != "" {
			d.lines = append(d.lines, strings.Join(strings.Fields(cur), " "))
		}
		cur = ""
	}
	return d
}

// stage returns the instructions of the stage named name.
func (d dockerfile) stage(t *testing.T, name string) []string {
	t.Helper()
	var in []string
	found := false
	for _, l := range d.lines {
		if strings.HasPrefix(l, "FROM ") {
			if found {
				break
			}
			found = strings.HasSuffix(l, " AS "+name)
			continue
		}
		if found {
			in = append(in, l)
		}
	}
	if !found {
		t.Fatalf("Dockerfile has no stage %s", name)
	}
	return in
}

// copiedTo lists the files a stage copies from the build stage, by
// destination path (a destination ending in / receives the sources' names).
func copiedTo(instrs []string) []string {
	var dst []string
	for _, l := range instrs {
		f := strings.Fields(l)
		if len(f) < 4 || f[0] != "COPY" || f[1] != "--from=build" {
			continue
		}
		to := f[len(f)-1]
		for _, src := range f[2 : len(f)-1] {
			if strings.HasSuffix(to, "/") {
				dst = append(dst, to+filepath.Base(src))
			} else {
				dst = append(dst, to)
			}
		}
	}
	return dst
}

// TestDockerfile checks the Dockerfile against the repository and the
// manifests, since no container engine runs here: its `go build` (run here
// with the same flags, CGO_ENABLED=0) builds static binaries of packages that
// exist, and the images hold the paths the Deployment and DaemonSet run.
func TestDockerfile(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the five binaries of the images")
	}
	d := readDockerfile(t)
	build := d.stage(t, "build")
	var goBuild string
	for _, l := range build {
		if i := strings.Index(l, "go build "); i >= 0 && strings.HasPrefix(l, "RUN ") {
			goBuild = l[i:]
		}
	}
	if goBuild == "" {
		t.Fatal("the build stage runs no go build")
	}
	if !slices.Contains(build, "ENV CGO_ENABLED=0 GOFLAGS=-buildvcs=false") {
		t.Errorf("the build stage does not set CGO_ENABLED=0")
	}
	pkgs := regexp.MustCompile(`\./\S+`).FindAllString(goBuild, -1)
	for _, want := range []string{"./cmd/routemode-operator", "./cmd/routemode-agent", "./cmd/routemode-cni", "./cmd/routemodectl", "./build/cni-install"} {
		if !slices.Contains(pkgs, want) {
			t.Errorf("go build does not build %s: %s", want, goBuild)
		}
	}

	out := t.TempDir()
	args := append([]string{"build", "-trimpath", "-ldflags=-s -w", "-o", out + "/"}, pkgs...)
	cmd := exec.Command("go", args...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOFLAGS=-buildvcs=false")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, b)
	}
	for _, p := range pkgs {
		bin := filepath.Join(out, filepath.Base(p))
		f, err := elf.Open(bin)
		if err != nil {
			t.Error(err)
			continue
		}
		for _, p := range f.Progs {
			if p.Type == elf.PT_INTERP {
				t.Errorf("%s is dynamically linked; distroless/static has no libc", bin)
			}
		}
		f.Close()
	}

	if got, want := slices.Sorted(slices.Values(images.Packages(images.All...))), slices.Sorted(slices.Values(pkgs)); !slices.Equal(got, want) {
		t.Errorf("make images builds %v, the Dockerfile %v", got, want)
	}
	for _, spec := range images.All {
		stage := d.stage(t, strings.TrimPrefix(spec.Repository, "routemode-"))
		var paths []string
		for _, f := range spec.Files {
			paths = append(paths, f.Path)
		}
		if got, want := slices.Sorted(slices.Values(paths)), slices.Sorted(slices.Values(copiedTo(stage))); !slices.Equal(got, want) {
			t.Errorf("make images puts %v in %s, the Dockerfile %v", got, spec.Repository, want)
		}
		entry := fmt.Sprintf("ENTRYPOINT [%q]", strings.Join(spec.Entrypoint, `", "`))
		if !slices.Contains(stage, entry) || !slices.Contains(stage, "USER "+spec.User) {
			t.Errorf("make images runs %s as %s as %q; the Dockerfile's stage: %v", spec.Repository, spec.User, spec.Entrypoint, stage)
		}
	}

	objs := kustomize(t, "config/default")
	op := find(t, objs, "Deployment", "routemode-operator")
	operator := d.stage(t, "operator")
	if got, want := copiedTo(operator), []string{"/usr/local/bin/routemode-operator"}; !slices.Equal(got, want) {
		t.Errorf("operator image holds %v, want %v", got, want)
	}
	if !slices.Contains(operator, `ENTRYPOINT ["/usr/local/bin/routemode-operator"]`) || !slices.Contains(operator, "USER 65532:65532") {
		t.Errorf("operator stage: %v", operator)
	}
	if img, _ := container(t, op, "containers")["image"].(string); !strings.HasPrefix(img, "ghcr.io/routemode/routemode-operator:") {
		t.Errorf("operator image %s", img)
	}

	ds := find(t, objs, "DaemonSet", "routemode-agent")
	agent := d.stage(t, "agent")
	files := copiedTo(agent)
	if !slices.Contains(agent, `ENTRYPOINT ["/usr/local/bin/routemode-agent"]`) || !slices.Contains(files, "/usr/local/bin/routemode-agent") {
		t.Errorf("agent stage: %v", agent)
	}
	// The CLI's help sends people to `kubectl exec ds/routemode-agent -- routemodectl bpf ...`.
	if !slices.Contains(files, "/usr/local/bin/routemodectl") {
		t.Errorf("the agent image holds %v, without routemodectl", files)
	}
	var initCmd []string
	cmdList, _ := container(t, ds, "initContainers")["command"].([]any)
	for _, a := range cmdList {
		s, _ := a.(string)
		initCmd = append(initCmd, s)
	}
	if len(initCmd) != 3 || !slices.Contains(files, initCmd[0]) || !slices.Contains(files, initCmd[1]) {
		t.Errorf("install-cni runs %v, but the agent image holds %v", initCmd, files)
	}
	if filepath.Base(initCmd[1]) != "routemode-cni" {
		t.Errorf("install-cni installs %s, want routemode-cni (the plugin type in the agent's CNI configuration)", initCmd[1])
	}
}

// container is the first container of list ("containers" or
// "initContainers") in a workload's pod template.
func container(t *testing.T, u *unstructured.Unstructured, list string) map[string]any {
	t.Helper()
	cs, _, err := unstructured.NestedSlice(u.Object, "spec", "template", "spec", list)
	if err != nil || len(cs) == 0 {
		t.Fatalf("%s has no %s: %v", id(u), list, err)
	}
	c, ok := cs[0].(map[string]any)
	if !ok {
		t.Fatalf("%s: %s[0] is %T", id(u), list, cs[0])
	}
	return c
}
