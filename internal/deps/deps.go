package deps

import (
	_ "github.com/cosi-project/runtime/pkg/state/impl/store/bolt"
	_ "github.com/cosi-project/runtime/pkg/controller/runtime"
	_ "github.com/cosi-project/runtime/pkg/state/protobuf/server"
	_ "github.com/cosi-project/runtime/pkg/state/conformance"
	_ "github.com/cosi-project/state-etcd/pkg/state/impl/etcd"
	_ "github.com/siderolabs/go-kubernetes/kubernetes/nodedrain"
	_ "github.com/siderolabs/go-kubernetes/kubernetes/upgrade"
	_ "github.com/siderolabs/go-kubernetes/kubernetes/manifests"
	_ "github.com/siderolabs/talos/pkg/machinery/client"
	_ "github.com/siderolabs/talos/pkg/machinery/compatibility"
	_ "github.com/siderolabs/talos/pkg/machinery/config/configloader"
	_ "github.com/siderolabs/talos/pkg/machinery/config/configpatcher"
	_ "github.com/siderolabs/talos/pkg/machinery/resources/runtime"
	_ "github.com/spf13/cobra"
	_ "go.etcd.io/bbolt"
	_ "go.etcd.io/etcd/client/v3"
	_ "go.etcd.io/etcd/server/v3/embed"
	_ "go.uber.org/zap"
	_ "k8s.io/client-go/kubernetes"
	_ "k8s.io/kubectl/pkg/drain"
)
