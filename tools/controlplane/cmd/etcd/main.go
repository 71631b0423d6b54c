// Command etcd is the upstream etcd server, built from the
// go.etcd.io/etcd/server/v3 module pinned in this directory's go.mod (the
// version kube-apiserver's etcd client is built against). It mirrors the
// main package of the go.etcd.io/etcd/v3 module.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
