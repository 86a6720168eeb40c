// Command routemode-cni is the routemode CNI plugin; see agent/cniplugin.
package main

import "github.com/routemode/routemode/agent/cniplugin"

func main() { cniplugin.Main() }
