package kubeemu

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"
)

// BinDirEnv names the environment variable that points at the directory holding the kube-apiserver,
// kube-controller-manager and kube-scheduler binaries built by `make kube-bins`.
const BinDirEnv = "UPSHIFT_KUBE_BIN_DIR"

// ErrBinaryMissing is wrapped by every error about a Kubernetes binary that cannot be found, so callers can tell a
// machine that has not run `make kube-bins` from a component that failed to start.
var ErrBinaryMissing = errors.New("kubernetes binary missing")

// stopGrace is how long a component gets to exit after SIGTERM before it is killed.
const stopGrace = 5 * time.Second

// logTailBytes is how much of a component's log an error quotes when the component exits unexpectedly.
const logTailBytes = 2048

// findBinary returns the path of the named binary in binDir (or $UPSHIFT_KUBE_BIN_DIR when binDir is empty).
func findBinary(binDir, name string) (string, error) {
	if binDir == "" {
		binDir = os.Getenv(BinDirEnv)
	}

	if binDir == "" {
		return "", fmt.Errorf("%w: %s is not set; run `make kube-bins` and point %s at its output (_out/bin)",
			ErrBinaryMissing, BinDirEnv, BinDirEnv)
	}

	path := filepath.Join(binDir, name)

	info, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("%w: %s (from %s=%s): %w; run `make kube-bins`", ErrBinaryMissing, path, BinDirEnv, binDir, err)
	}

	if info.IsDir() || info.Mode().Perm()&0o111 == 0 {
		return "", fmt.Errorf("%w: %s (from %s=%s) is not an executable file; run `make kube-bins`",
			ErrBinaryMissing, path, BinDirEnv, binDir)
	}

	return path, nil
}

// process is one control-plane component running as a child process that logs to a file.
type process struct {
	name    string
	logPath string
	cmd     *exec.Cmd
	logFile *os.File

	done chan struct{} // closed once the process has exited and waitErr is set
	// waitErr is the result of cmd.Wait; read it only after done is closed.
	waitErr error
}

// startProcess starts binary with args, its stdout and stderr appended to dir/name.log. The child gets SIGKILL when
// the parent dies, so a crashed or killed test never leaves a component behind.
func startProcess(binary, dir, name string, args []string) (*process, error) {
	logPath := filepath.Join(dir, name+".log")

	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("opening the %s log: %w", name, err)
	}

	cmd := exec.Command(binary, args...)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}

	if err := cmd.Start(); err != nil {
		logFile.Close() //nolint:errcheck

		return nil, fmt.Errorf("starting %s: %w", name, err)
	}

	p := &process{name: name, logPath: logPath, cmd: cmd, logFile: logFile, done: make(chan struct{})}

	go func() {
		p.waitErr = cmd.Wait()
		logFile.Close() //nolint:errcheck
		close(p.done)
	}()

	return p, nil
}

// exitError describes an unexpected exit, quoting the end of the log so the cause is visible in a test failure.
// It must be called after done is closed.
func (p *process) exitError() error {
	return fmt.Errorf("%s exited (%v); end of %s:\n%s", p.name, p.waitErr, p.logPath, p.logTail())
}

// logTail returns the last logTailBytes of the component's log.
func (p *process) logTail() []byte {
	data, err := os.ReadFile(p.logPath)
	if err != nil {
		return []byte(err.Error())
	}

	if len(data) > logTailBytes {
		data = data[len(data)-logTailBytes:]
	}

	return data
}

// portInUse reports whether the component exited because its port was taken between choosing it and binding it.
func (p *process) portInUse() bool {
	return bytes.Contains(p.logTail(), []byte("address already in use"))
}

// stop sends SIGTERM, waits up to stopGrace, then kills the process. A process that already exited is not an error
// here: the caller only needs it gone.
func (p *process) stop() error {
	select {
	case <-p.done:
		return nil
	default:
	}

	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("stopping %s: %w", p.name, err)
	}

	select {
	case <-p.done:
		return nil
	case <-time.After(stopGrace):
	}

	if err := p.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("killing %s: %w", p.name, err)
	}

	<-p.done

	return nil
}
