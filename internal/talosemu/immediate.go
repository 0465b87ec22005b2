package talosemu

import (
	"errors"
	"fmt"
	"reflect"

	"github.com/siderolabs/talos/pkg/machinery/config"
	"github.com/siderolabs/talos/pkg/machinery/config/types/v1alpha1"
)

// errNeedsReboot is Talos' refusal of a NO_REBOOT apply whose change only a reboot can make; AUTO turns it into a
// reboot.
var errNeedsReboot = errors.New("this config change can't be applied in immediate mode")

// canApplyImmediate decides, as Talos' runtime does (machined's CanApplyImmediate), whether next can replace cur
// without a reboot: the v1alpha1 document may differ only in the fields Talos reconfigures live (below); any other
// difference (machine.env, machine.files, machine.disks, machine.type, most of machine.features, ...) needs a
// reboot. Documents other than v1alpha1 are not compared (the emulator renders nothing from them).
func canApplyImmediate(cur, next config.Provider) error {
	c, n := cur.RawV1Alpha1(), next.RawV1Alpha1()
	if c == nil || n == nil {
		return errors.New("the config is not v1alpha1")
	}

	n = n.DeepCopy()
	n.ConfigDebug, n.ClusterConfig = c.ConfigDebug, c.ClusterConfig

	if n.MachineConfig != nil && c.MachineConfig != nil {
		keepLive(n.MachineConfig, c.MachineConfig)
	}

	if !reflect.DeepEqual(c, n) {
		return fmt.Errorf("%w: the change touches fields Talos applies only at boot", errNeedsReboot)
	}

	return nil
}

// keepLive copies into n the machine fields Talos applies without a reboot (Talos v1.14's list), so what is left
// to compare is what needs one.
//
//nolint:staticcheck // deprecated fields are still applied live by Talos
func keepLive(n, c *v1alpha1.MachineConfig) {
	n.MachineCA, n.MachineAcceptedCAs, n.MachineTime, n.MachineCertSANs = c.MachineCA, c.MachineAcceptedCAs, c.MachineTime, c.MachineCertSANs
	n.MachineInstall, n.MachineNetwork, n.MachineSysfs, n.MachineSysctls = c.MachineInstall, c.MachineNetwork, c.MachineSysfs, c.MachineSysctls
	n.MachineLogging, n.MachineControlPlane, n.MachineKubelet, n.MachineKernel = c.MachineLogging, c.MachineControlPlane, c.MachineKubelet, c.MachineKernel
	n.MachineRegistries, n.MachinePods, n.MachineSeccompProfiles = c.MachineRegistries, c.MachinePods, c.MachineSeccompProfiles
	n.MachineNodeAnnotations, n.MachineNodeLabels, n.MachineNodeTaints = c.MachineNodeAnnotations, c.MachineNodeLabels, c.MachineNodeTaints

	if n.MachineFeatures != nil && c.MachineFeatures != nil {
		nf, cf := n.MachineFeatures, c.MachineFeatures
		nf.KubernetesTalosAPIAccessConfig, nf.KubePrismSupport, nf.HostDNSSupport = cf.KubernetesTalosAPIAccessConfig, cf.KubePrismSupport, cf.HostDNSSupport
		nf.ImageCacheSupport, nf.FeatureNodeAddressSortAlgorithm = cf.ImageCacheSupport, cf.FeatureNodeAddressSortAlgorithm
	}
}
