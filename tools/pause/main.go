// Command pause holds a pod's namespaces for containerd: it does nothing
// until it is told to stop (SIGTERM or SIGINT), then exits 0. As PID 1 of its
// container it gets only the signals it handles, so it asks for these two.
// It reaps no zombies: the pod's containers run in their own PID namespaces.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	<-stop
}
