// Package tmpfs mounts small tmpfs devices for tests that fill the disk under a state file.
package tmpfs

import (
	"fmt"
	"syscall"
)

// Mount mounts a tmpfs of size bytes on dir, so a test can fill the device under an engine's data dir; the
// error says why where mounting is impossible (not root, no CAP_SYS_ADMIN), for the test to skip with.
func Mount(dir string, size int) (unmount func() error, err error) {
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, fmt.Sprintf("size=%d", size)); err != nil {
		return nil, fmt.Errorf("mounting a %d-byte tmpfs on %s (needs root or CAP_SYS_ADMIN): %w", size, dir, err)
	}

	return func() error { return syscall.Unmount(dir, 0) }, nil
}
