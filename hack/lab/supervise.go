package lab

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Restart backoff of supervised lab processes. A kubelet starts at 10 s
// and doubles to 5 min; the lab starts at 2 s, the restart delay the chaos
// suite's faults assume, and caps lower so a lab test recovers within its
// timeouts.
const (
	RestartBackoff    = 2 * time.Second
	MaxRestartBackoff = 30 * time.Second
	// A run that lasted this long resets the backoff, as a container that
	// ran fine for a while does.
	restartReset = time.Minute
	// stopGrace is how long a child has to exit after SIGTERM.
	stopGrace = 10 * time.Second
)

// Supervise runs argv and starts it again whenever it exits, for whatever
// reason, after a backoff that doubles from RestartBackoff to
// MaxRestartBackoff: processes in the lab live as they would in pods, so a
// fault measures the product, not the lab (an operator that exits on a
// lost leader lease comes back). The running child's pid is written to
// pidFile, for fault injection. When ctx ends, the child gets SIGTERM and
// Supervise returns once it exited. The child stays in the supervisor's
// process group, so stopping the group stops both.
func Supervise(ctx context.Context, pidFile string, argv []string) error {
	if len(argv) == 0 {
		return errors.New("supervise: no command")
	}
	backoff := RestartBackoff
	for {
		cmd := exec.Command(argv[0], argv[1:]...)
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		if err := cmd.Start(); err != nil {
			return fmt.Errorf("supervise: starting %s: %w", argv[0], err)
		}
		if err := os.WriteFile(pidFile, []byte(strconv.Itoa(cmd.Process.Pid)), 0o600); err != nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			return fmt.Errorf("supervise: %w", err)
		}
		started := time.Now()
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		select {
		case <-ctx.Done():
			_ = cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-exited:
			case <-time.After(stopGrace):
				_ = cmd.Process.Kill()
				<-exited
			}
			return nil
		case err := <-exited:
			ran := time.Since(started)
			if ran >= restartReset {
				backoff = RestartBackoff
			}
			fmt.Fprintf(os.Stderr, "supervise: %s exited after %s (%v); restarting in %s\n",
				argv[0], ran.Round(time.Millisecond), err, backoff)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, MaxRestartBackoff)
		}
	}
}

// supervisedPID is the pid of the process the supervisor of name runs now.
// The pid file outlives the child it names (until the supervisor starts
// the next), and a pid is soon reused on a busy machine: the pid counts
// only while its parent is the supervisor of this very pid file. Killing
// a reused pid, and "its supervisor" with it, once killed another test
// binary (the real-node test's, parent of a kubectl that got the pid).
func (l *Lab) supervisedPID(name string) (int, error) {
	b, err := os.ReadFile(l.pidFile(name))
	if err != nil {
		return 0, fmt.Errorf("no supervised process %s: %w", name, err)
	}
	pid, err := strconv.Atoi(string(b))
	if err != nil {
		return 0, fmt.Errorf("%s: %w", l.pidFile(name), err)
	}
	_, ppid, err := procStat("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, fmt.Errorf("%s is not running (pid %d): %w", name, pid, err)
	}
	cmdline, err := os.ReadFile("/proc/" + ppid + "/cmdline")
	if err != nil || !bytes.Contains(cmdline, []byte("\x00--pid-file\x00"+l.pidFile(name)+"\x00")) {
		return 0, fmt.Errorf("%s is not running: pid %d is another process now", name, pid)
	}
	return pid, nil
}

func (l *Lab) pidFile(name string) string { return l.path("logs", name+".pid") }

// stopSupervised SIGKILLs the process name and then its supervisor, so
// that nothing starts it again: a node whose agent died for good. The
// supervisor goes first, or it would restart the child in between.
func (l *Lab) stopSupervised(name string) error {
	pid, err := l.unsupervise(name)
	if err != nil {
		return err
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		return fmt.Errorf("killing %s (pid %d): %w", name, pid, err)
	}
	return nil
}

// unsupervise SIGKILLs the supervisor of the process name, which runs on
// with nothing to start it again, and returns that process.
func (l *Lab) unsupervise(name string) (int, error) {
	pid, err := l.supervisedPID(name)
	if err != nil {
		return 0, err
	}
	// supervisedPID checked the parent is name's supervisor.
	_, ppid, err := procStat("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, fmt.Errorf("reading %s's parent: %w", name, err)
	}
	supervisor, err := strconv.Atoi(ppid)
	if err != nil {
		return 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	if err := syscall.Kill(supervisor, syscall.SIGKILL); err != nil {
		return 0, fmt.Errorf("killing %s's supervisor (pid %d): %w", name, supervisor, err)
	}
	return pid, nil
}

// Suspend stops the supervised process name with SIGSTOP and returns once
// every thread of it is stopped, so nothing it does can land afterwards but
// what it had already sent: a hung process, whose clients see connections
// that neither answer nor close, and which its supervisor does not notice
// (as a kubelet without a liveness probe would not). The returned resume
// continues it, and is set whenever the process was signalled, also with
// an error.
func (l *Lab) Suspend(name string) (resume func(), err error) {
	pid, err := l.supervisedPID(name)
	if err != nil {
		return nil, err
	}
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		return nil, fmt.Errorf("stopping %s (pid %d): %w", name, pid, err)
	}
	resume = func() { _ = syscall.Kill(pid, syscall.SIGCONT) }
	// Signals reach threads one by one: wait until none runs.
	return resume, wait(context.Background(), 10*time.Second, name+"'s threads to stop", func() (bool, error) {
		stats, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/stat", pid))
		if err != nil || len(stats) == 0 {
			return false, fmt.Errorf("%s (pid %d) has no threads to read: %v", name, pid, err)
		}
		for _, f := range stats {
			if state, _, err := procStat(f); err == nil && !strings.Contains("TtZX", state) {
				return false, nil
			}
		}
		return true, nil
	})
}

// LogsAround returns the lines of the lab's logs stamped within d of any
// of times, oldest first, at most limit of them, each prefixed with where
// it was logged: what the lab's components did when probes were lost or
// requests failed. The logs are the supervised processes' and, on real
// nodes, every container's (the agents, the operator, the workloads).
func (l *Lab) LogsAround(times []time.Time, d time.Duration, limit int) string {
	if len(times) == 0 {
		return ""
	}
	type line struct {
		at   time.Time
		text string
	}
	var lines []line
	near := func(at time.Time) bool {
		return slices.ContainsFunc(times, func(t time.Time) bool { return at.Sub(t).Abs() <= d })
	}
	eachLine := func(file string, stamp func(string) (time.Time, string, bool), name string) {
		b, err := os.ReadFile(file)
		if err != nil {
			return
		}
		for _, text := range strings.Split(string(b), "\n") {
			if at, text, ok := stamp(text); ok && near(at) {
				lines = append(lines, line{at, name + ": " + text})
			}
		}
	}
	files, _ := filepath.Glob(l.path("logs", "*.log"))
	for _, f := range files {
		eachLine(f, jsonStamp, strings.TrimSuffix(filepath.Base(f), ".log"))
	}
	for i := range l.state.NodePIDs {
		// The kubelet's layout: <namespace>_<pod>_<uid>/<container>/<restart>.log.
		files, _ := filepath.Glob(filepath.Join(l.NodeRoot(i), "var", "log", "pods", "*", "*", "*.log"))
		for _, f := range files {
			pod, container := filepath.Base(filepath.Dir(filepath.Dir(f))), filepath.Base(filepath.Dir(f))
			_, pod, _ = strings.Cut(pod[:max(strings.LastIndexByte(pod, '_'), 0)], "_")
			eachLine(f, criStamp, fmt.Sprintf("%s %s/%s", l.Nodes[i].Name, pod, container))
		}
	}
	slices.SortStableFunc(lines, func(a, b line) int { return a.at.Compare(b.at) })
	var out []string
	for i, ln := range lines {
		if i == limit {
			out = append(out, fmt.Sprintf("… and %d more", len(lines)-limit))
			break
		}
		out = append(out, ln.text)
	}
	return strings.Join(out, "\n")
}

// jsonStamp is the time of a structured log line from the lab's own
// processes.
func jsonStamp(text string) (time.Time, string, bool) {
	var entry struct {
		TS string `json:"ts"`
	}
	if json.Unmarshal([]byte(text), &entry) != nil {
		return time.Time{}, "", false
	}
	at, err := time.Parse(time.RFC3339Nano, entry.TS)
	return at, text, err == nil
}

// criStamp is the time the container runtime put before a container's
// log line ("<time> <stream> <tag> <line>"), and the line.
func criStamp(text string) (time.Time, string, bool) {
	f := strings.SplitN(text, " ", 4)
	if len(f) < 4 {
		return time.Time{}, "", false
	}
	at, err := time.Parse(time.RFC3339Nano, f[0])
	return at, f[3], err == nil
}

// procStat reads a process's or thread's state letter and parent pid from
// its stat file (/proc/<pid>/stat or /proc/<pid>/task/<tid>/stat).
func procStat(path string) (state, ppid string, err error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", "", err
	}
	// The fields after the command name, which is in parentheses and may
	// hold spaces: state, then the parent's pid.
	fields := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	if len(fields) < 2 {
		return "", "", fmt.Errorf("%s: %q", path, b)
	}
	return fields[0], fields[1], nil
}
