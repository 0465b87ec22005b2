// Package talosemu emulates a fleet of Talos Linux clusters for tests, benchmarks and demos.
//
// No real Talos machine exists where upshift is developed and tested, so the engine runs against this emulator
// instead. It is built so that the engine cannot tell it from Talos through the API it uses: one mTLS gRPC endpoint
// per fleet serves the real machinery protos (MachineService, LifecycleService, ImageService) and the COSI State
// service for every node, routing on the "node" gRPC metadata like Talos' apid does. Control-plane nodes run real
// embedded etcd members; reboots take a node's API and etcd member down for a configurable downtime and rotate its
// boot ID; installed versions become the running version only after a reboot. Faults can be injected per node, and
// every call the fleet receives is recorded in a journal that tests use to prove ordering and safety properties.
//
// The Kubernetes half of a cluster (a real kube-apiserver and one emulated kubelet per node) plugs in through the
// KubernetesRunner interface, so this package does not depend on how those processes are built or started.
//
// A Kubernetes upgrade meets what Talos does: pre-pulls into the CRI or system containerd namespace (with a
// pull-fail fault per image), machine configs patched by machinery's stdpatches and applied without a reboot,
// control-plane config resources whose version reaches the static pods' talos.dev/config-version annotation, static
// pods restarting (not Ready for a while; a kube-apiserver restart interrupts the cluster's API endpoint), the
// kubelet service restarting with the new version, and the kube-proxy manifest following its image. The journal
// names the images each ApplyConfiguration changes (docs/architecture.md, "The test bed").
//
// Lite mode drops etcd and Kubernetes and models etcd membership in memory, so one process can hold thousands of
// nodes for scale benchmarks.
package talosemu
