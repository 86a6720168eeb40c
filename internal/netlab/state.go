package netlab

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/routemode/routemode/agent/nsutil"
)

// StateRoot holds one state file per lab: what it made, so that Close, and
// Sweep after a crash, remove exactly that.
const StateRoot = "/run/routemode-netlab"

// record is a lab's state file.
type record struct {
	// PID is the process that owns the lab; Sweep leaves the labs of live
	// processes alone.
	PID        int      `json:"pid"`
	Namespaces []string `json:"namespaces"`
	// Dirs are removed recursively: bpffs pin directories, the nodes'
	// agent state.
	Dirs []string `json:"dirs"`
}

type state struct {
	path string
	mu   sync.Mutex
	rec  record
}

func newState(path string) (*state, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	s := &state{path: path, rec: record{PID: os.Getpid()}}
	if _, err := os.Stat(path); err == nil {
		return nil, fmt.Errorf("a lab is recorded in %s: remove it first", path)
	}
	return s, s.save()
}

// add records a change before the caller makes it, so a crash in between
// leaves at worst a record of something that does not exist.
func (s *state) add(change func(*record)) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	change(&s.rec)
	return s.save()
}

func (s *state) save() error {
	b, err := json.MarshalIndent(s.rec, "", "  ")
	if err != nil {
		return err
	}
	tmp := s.path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, s.path)
}

func (s *state) remove() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := removeRecorded(s.rec); err != nil {
		return err
	}
	return os.Remove(s.path)
}

// removeRecorded deletes, newest first, what a record lists; it goes on
// past errors so a half-made lab is removed as far as possible.
func removeRecorded(rec record) error {
	var errs []error
	for i := len(rec.Namespaces) - 1; i >= 0; i-- {
		if err := nsutil.Delete(rec.Namespaces[i]); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	for i := len(rec.Dirs) - 1; i >= 0; i-- {
		if err := os.RemoveAll(rec.Dirs[i]); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// RecordDir records dir (a bpffs pin directory, say) as the lab's, to be
// removed with it, and returns it.
func (l *Lab) RecordDir(dir string) (string, error) {
	return dir, l.state.add(func(r *record) { r.Dirs = append(r.Dirs, dir) })
}

// Down removes what the lab recorded in stateFile made, and the file; a
// missing file is no lab.
func Down(stateFile string) error {
	b, err := os.ReadFile(stateFile)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var rec record
	if err := json.Unmarshal(b, &rec); err != nil {
		return fmt.Errorf("%s: %w", stateFile, err)
	}
	if err := removeRecorded(rec); err != nil {
		return err
	}
	return os.Remove(stateFile)
}

// Sweep removes what the labs of processes that no longer run left
// behind; it leaves live processes' labs alone.
func Sweep() error {
	files, err := filepath.Glob(filepath.Join(StateRoot, "*.json"))
	if err != nil {
		return err
	}
	var errs []error
	for _, f := range files {
		b, err := os.ReadFile(f)
		if errors.Is(err, os.ErrNotExist) {
			continue // removed by its lab meanwhile
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		var rec record
		if err := json.Unmarshal(b, &rec); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", f, err))
			continue
		}
		if !alive(rec.PID) {
			errs = append(errs, Down(f))
		}
	}
	bins, _ := filepath.Glob(filepath.Join(StateRoot, cniDirPrefix+"*"))
	for _, d := range bins {
		if pid, err := strconv.Atoi(strings.TrimPrefix(filepath.Base(d), cniDirPrefix)); err == nil && !alive(pid) {
			errs = append(errs, os.RemoveAll(d))
		}
	}
	return errors.Join(errs...)
}

func alive(pid int) bool {
	if syscall.Kill(pid, 0) != nil {
		return false
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	return err == nil && !strings.Contains(string(b), ") Z ")
}
