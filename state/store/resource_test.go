package store_test

import (
	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/resource/meta"
	"github.com/cosi-project/runtime/pkg/resource/protobuf"
	"github.com/cosi-project/runtime/pkg/resource/typed"
)

// statusType is a registered test resource shaped like a per-machine upgrade status, so tests and benchmarks
// marshal a realistic spec and get typed resources back.
const statusType = resource.Type("TestStatuses.store.upshift.io")

type statusSpec struct {
	Phase   string `protobuf:"1" yaml:"phase"`
	Node    string `protobuf:"2" yaml:"node"`
	BootID  string `protobuf:"3" yaml:"bootID"`
	Attempt int    `protobuf:"4" yaml:"attempt"`
}

func (s statusSpec) DeepCopy() statusSpec { return s }

type statusExtension struct{}

func (statusExtension) ResourceDefinition() meta.ResourceDefinitionSpec {
	return meta.ResourceDefinitionSpec{Type: statusType, DefaultNamespace: "default"}
}

type status = typed.Resource[statusSpec, statusExtension]

func newStatus(ns resource.Namespace, id resource.ID) *status {
	return typed.NewResource[statusSpec, statusExtension](
		resource.NewMetadata(ns, statusType, id, resource.VersionUndefined),
		statusSpec{Phase: "Queued", Node: id, BootID: "5b0c1d2e-0f6a-4c44-9a43-64b1e6c1a7f2"},
	)
}

func init() {
	if err := protobuf.RegisterDynamic[statusSpec](statusType, &status{}); err != nil {
		panic(err)
	}
}
