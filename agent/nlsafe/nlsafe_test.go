package nlsafe

import (
	"errors"
	"fmt"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

func TestRetry(t *testing.T) {
	calls := 0
	v, err := Retry(func() (int, error) {
		calls++
		if calls < 3 {
			return -1, netlink.ErrDumpInterrupted // with partial data
		}
		return 42, nil
	})
	if v != 42 || err != nil || calls != 3 {
		t.Errorf("Retry = %d, %v after %d calls", v, err, calls)
	}
	calls = 0
	v, err = Retry(func() (int, error) { calls++; return 7, netlink.ErrDumpInterrupted })
	if !errors.Is(err, netlink.ErrDumpInterrupted) || v != 0 || calls != Attempts {
		t.Errorf("always interrupted: %d, %v after %d calls; want the error, no partial data, %d calls", v, err, calls, Attempts)
	}
	calls = 0
	_, err = Retry(func() (int, error) { calls++; return 0, unix.EPERM })
	if !errors.Is(err, unix.EPERM) || calls != 1 {
		t.Errorf("other errors must not be retried: %v after %d calls", err, calls)
	}
}

func TestIsNotFound(t *testing.T) {
	for _, err := range []error{unix.ENOENT, unix.ESRCH, unix.ENODEV, netlink.LinkNotFoundError{}, fmt.Errorf("x: %w", unix.ESRCH)} {
		if !IsNotFound(err) {
			t.Errorf("IsNotFound(%v) = false", err)
		}
	}
	for _, err := range []error{nil, unix.EPERM, errors.New("ENOENT")} {
		if IsNotFound(err) {
			t.Errorf("IsNotFound(%v) = true", err)
		}
	}
}
