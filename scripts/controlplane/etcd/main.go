// Command etcd is etcd's own server (the same entry point as the etcd release binary), built
// here so scripts/cluster.sh needs nothing but Go. Its own module, so that etcd's dependency
// versions never meet Kubernetes'.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
