// Command routemodectl inspects and steers routemode. Installed as
// kubectl-routemode it is also the kubectl plugin "kubectl routemode".
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/routemode/routemode/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Main(ctx, os.Args[0], os.Args[1:], cli.Streams{In: os.Stdin, Out: os.Stdout, ErrOut: os.Stderr})
	stop()
	os.Exit(code)
}
