package nlsafe

import "golang.org/x/sys/unix"

var (
	errNoEnt = unix.ENOENT
	errSrch  = unix.ESRCH
	errNoDev = unix.ENODEV
)
