package images

import (
	"archive/tar"
	"context"
	"errors"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// fakeBinaries writes a file per binary of specs into a new directory,
// with contents and mtimes that depend on stamp.
func fakeBinaries(t *testing.T, stamp time.Time, specs ...Spec) string {
	t.Helper()
	dir := t.TempDir()
	for _, s := range specs {
		for _, f := range s.Files {
			p := filepath.Join(dir, f.Binary())
			if err := os.WriteFile(p, []byte("binary "+f.Binary()), 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.Chtimes(p, stamp, stamp); err != nil {
				t.Fatal(err)
			}
		}
	}
	return dir
}

// files lists the image's one layer as path -> mode.
func files(t *testing.T, img v1.Image) map[string]int64 {
	t.Helper()
	rc := mutate.Extract(img)
	defer rc.Close()
	out := map[string]int64{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		out["/"+strings.TrimSuffix(h.Name, "/")] = h.Mode
	}
}

func TestBuildIsReproducibleAndHoldsTheSpec(t *testing.T) {
	epoch := time.Unix(1700000000, 0).UTC()
	a, err := Build(Agent, fakeBinaries(t, time.Now(), Agent), "amd64", epoch)
	if err != nil {
		t.Fatal(err)
	}
	// Other files on disk with other mtimes, built again: the same image.
	b, err := Build(Agent, fakeBinaries(t, time.Now().Add(-time.Hour), Agent), "amd64", epoch)
	if err != nil {
		t.Fatal(err)
	}
	da, _ := a.Digest()
	db, _ := b.Digest()
	if da != db {
		t.Errorf("two builds of the same binaries: %s and %s", da, db)
	}
	got := files(t, a)
	for _, f := range Agent.Files {
		if got[f.Path] != 0o755 {
			t.Errorf("%s: mode %o in %v", f.Path, got[f.Path], got)
		}
	}
	if got["/tmp"] != 0o1777 {
		t.Errorf("/tmp: mode %o", got["/tmp"])
	}
	cf, err := a.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(cf.Config.Entrypoint, Agent.Entrypoint) || cf.Config.User != "0:0" || cf.OS != "linux" || cf.Architecture != "amd64" || !cf.Created.Equal(epoch) {
		t.Errorf("config: %+v, created %s", cf.Config, cf.Created)
	}
	op, err := Build(Operator, fakeBinaries(t, time.Now(), Operator), "arm64", epoch)
	if err != nil {
		t.Fatal(err)
	}
	if cf, _ := op.ConfigFile(); cf.Config.User != "65532:65532" || cf.Architecture != "arm64" {
		t.Errorf("operator config: %+v %s", cf.Config, cf.Architecture)
	}
}

func TestBuildSaysWhichBinaryIsMissing(t *testing.T) {
	dir := fakeBinaries(t, time.Now(), Agent)
	if err := os.Remove(filepath.Join(dir, "routemode-cni")); err != nil {
		t.Fatal(err)
	}
	_, err := Build(Agent, dir, "amd64", time.Unix(0, 0))
	if err == nil || !strings.Contains(err.Error(), "/opt/routemode/cni/routemode-cni (build ./cmd/routemode-cni first)") {
		t.Errorf("error %v; want it to name the missing file and its package", err)
	}
}

func TestEpoch(t *testing.T) {
	t.Setenv("SOURCE_DATE_EPOCH", "")
	if e, err := Epoch(); err != nil || e.Unix() != 0 {
		t.Errorf("unset: %s %v", e, err)
	}
	t.Setenv("SOURCE_DATE_EPOCH", "1700000000")
	if e, err := Epoch(); err != nil || e.Unix() != 1700000000 {
		t.Errorf("set: %s %v", e, err)
	}
	t.Setenv("SOURCE_DATE_EPOCH", "yesterday")
	if _, err := Epoch(); err == nil || !strings.Contains(err.Error(), `SOURCE_DATE_EPOCH="yesterday"`) {
		t.Errorf("bad value: %v", err)
	}
}

// TestArchiveAndPush writes an archive, reads it back and pushes it to a
// registry served in this process; what the registry then serves is the
// same image, byte for byte.
func TestArchiveAndPush(t *testing.T) {
	img, err := Build(Operator, fakeBinaries(t, time.Now(), Operator), "amd64", time.Unix(0, 0))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	ref, err := Ref(host+"/routemode/", Operator, "v9.9.9")
	if err != nil {
		t.Fatal(err)
	}
	if want := host + "/routemode/routemode-operator:v9.9.9"; ref.String() != want {
		t.Errorf("ref %s, want %s", ref, want)
	}
	path := filepath.Join(t.TempDir(), "operator.tar")
	if err := WriteArchive(path, ref, img); err != nil {
		t.Fatal(err)
	}
	loaded, err := ReadArchive(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := Push(context.Background(), ref, loaded); err != nil {
		t.Fatal(err)
	}
	pulled, err := remote.Image(ref)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := img.Digest()
	got, _ := pulled.Digest()
	if got != want {
		t.Errorf("the registry serves %s, built %s", got, want)
	}
	if _, err := ReadArchive(filepath.Join(t.TempDir(), "none.tar")); err == nil || !strings.Contains(err.Error(), "none.tar") {
		t.Errorf("missing archive: %v", err)
	}
	if _, err := Ref("Not A Registry", Operator, "v1"); err == nil {
		t.Errorf("a registry with spaces was accepted")
	}
	if _, err := name.NewTag(ref.String()); err != nil {
		t.Error(err)
	}
}
