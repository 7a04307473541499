// The pod sandbox's first process, as Kubernetes' own pause image has: it holds the pod's
// namespaces open, reaps orphaned children (it is PID 1 of the pod when the pod shares its
// process namespace) and exits on SIGINT or SIGTERM. scripts/images.sh builds it statically
// into the localhost/pause image that the node's containerd uses as its sandbox image.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for s := range signals {
		if s != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			var status syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
