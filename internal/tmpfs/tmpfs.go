// Package tmpfs mounts small tmpfs devices for tests that fill the disk under a state file.
package tmpfs

import (
	"fmt"
	"os"
	"syscall"
	"testing"
)

// SkipEnv names the environment variable that lets the full-disk tests skip where mounting is impossible. Without
// it a failed mount fails the test: CI runs as root and can mount, so a skip there would hide that the fault is
// not tested at all.
const SkipEnv = "UPSHIFT_SKIP_TMPFS"

// Mount mounts a tmpfs of size bytes on dir, so a test can fill the device under an engine's data dir; the
// error says why where mounting is impossible (not root, no CAP_SYS_ADMIN).
func Mount(dir string, size int) (unmount func() error, err error) {
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, fmt.Sprintf("size=%d", size)); err != nil {
		return nil, fmt.Errorf("mounting a %d-byte tmpfs on %s (needs root or CAP_SYS_ADMIN): %w", size, dir, err)
	}

	return func() error { return syscall.Unmount(dir, 0) }, nil
}

// MountForTest mounts a tmpfs of size bytes on dir for the test's life. Where mounting fails the test fails, unless
// SkipEnv is set, when it skips saying why.
func MountForTest(t testing.TB, dir string, size int) {
	t.Helper()

	unmount, err := Mount(dir, size)
	if err != nil {
		if os.Getenv(SkipEnv) != "" {
			t.Skipf("%s is set and the full-disk test cannot run here: %v", SkipEnv, err)
		}

		t.Fatalf("the full-disk test needs a tmpfs (set %s=1 to skip it where mounting is impossible): %v", SkipEnv, err)
	}

	t.Cleanup(func() {
		if err := unmount(); err != nil {
			t.Errorf("unmounting the tmpfs on %s: %v", dir, err)
		}
	})
}
