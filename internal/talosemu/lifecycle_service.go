package talosemu

import (
	"github.com/siderolabs/talos/pkg/machinery/api/machine"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// lifecycleService implements LifecycleService (Talos >= 1.13): Upgrade installs a version for the next boot and
// never reboots.
type lifecycleService struct {
	machine.UnimplementedLifecycleServiceServer
}

func (lifecycleService) Upgrade(req *machine.LifecycleServiceUpgradeRequest, srv grpc.ServerStreamingServer[machine.LifecycleServiceUpgradeResponse]) error {
	n := nodeFrom(srv.Context())

	if err := requireLifecycleAPI(n); err != nil {
		return err
	}

	image := req.GetSource().GetImageName()
	if image == "" {
		return status.Error(codes.InvalidArgument, "installer image is required")
	}

	if err := n.beginSequence(); err != nil {
		return status.Error(codes.FailedPrecondition, err.Error())
	}

	defer n.endSequence()

	send := func(progress *machine.LifecycleServiceInstallProgress) error {
		return srv.Send(&machine.LifecycleServiceUpgradeResponse{Progress: progress})
	}

	if err := send(message("pulling installer image " + image)); err != nil {
		return err
	}

	version, err := n.install(image)
	if err != nil {
		n.fleet.journal.record(Entry{Node: n.name, Event: EventInstallFailed, Image: image, Error: err.Error()})

		if err = send(message("upgrade failed: " + err.Error())); err != nil {
			return err
		}

		return send(&machine.LifecycleServiceInstallProgress{Response: &machine.LifecycleServiceInstallProgress_ExitCode{ExitCode: 1}})
	}

	n.fleet.journal.record(Entry{Node: n.name, Event: EventInstalled, Image: image, Version: version})

	if err = send(message("installed Talos v" + version + "; it becomes active after a reboot")); err != nil {
		return err
	}

	return send(&machine.LifecycleServiceInstallProgress{Response: &machine.LifecycleServiceInstallProgress_ExitCode{ExitCode: 0}})
}

func message(text string) *machine.LifecycleServiceInstallProgress {
	return &machine.LifecycleServiceInstallProgress{Response: &machine.LifecycleServiceInstallProgress_Message{Message: text}}
}

// requireLifecycleAPI fails like a Talos release older than 1.13, which has no LifecycleService or ImageService, so
// clients fall back to the legacy flow.
func requireLifecycleAPI(n *Node) error {
	if v := n.Version(); !servesLifecycleAPI(v) {
		return status.Errorf(codes.Unimplemented, "unknown service: not served by Talos v%s", v)
	}

	return nil
}

// imageService implements ImageService (Talos >= 1.13).
type imageService struct {
	machine.UnimplementedImageServiceServer
}

func (imageService) Pull(req *machine.ImageServicePullRequest, srv grpc.ServerStreamingServer[machine.ImageServicePullResponse]) error {
	n := nodeFrom(srv.Context())

	if err := requireLifecycleAPI(n); err != nil {
		return err
	}

	if err := pullInto(n, req.GetContainerd().GetNamespace(), req.GetImageRef()); err != nil {
		return err
	}

	return srv.Send(&machine.ImageServicePullResponse{Response: &machine.ImageServicePullResponse_Name{Name: req.GetImageRef()}})
}

func (imageService) List(req *machine.ImageServiceListRequest, srv grpc.ServerStreamingServer[machine.ImageServiceListResponse]) error {
	n := nodeFrom(srv.Context())

	if err := requireLifecycleAPI(n); err != nil {
		return err
	}

	namespace, err := pullNamespace(req.GetContainerd().GetNamespace())
	if err != nil {
		return err
	}

	for _, image := range n.pulledImages(namespace) {
		if err := srv.Send(&machine.ImageServiceListResponse{Name: image}); err != nil {
			return err
		}
	}

	return nil
}
