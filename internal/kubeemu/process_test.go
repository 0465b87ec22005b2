package kubeemu

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

const helperEnv = "KUBEEMU_TEST_PARENT"

// A component must not outlive the process that started it, even when that process is killed with SIGKILL and
// never gets to call Stop. The test runs itself as the parent, kills it, and waits for the child to vanish.
func TestChildDiesWithParent(t *testing.T) {
	if os.Getenv(helperEnv) == "1" {
		p, err := startProcess("/bin/sleep", t.TempDir(), "sleep", []string{"600"})
		if err != nil {
			fmt.Println("ERROR", err)
			os.Exit(1)
		}

		fmt.Println("PID", p.cmd.Process.Pid)
		os.Stdin.Read(make([]byte, 1)) //nolint:errcheck // blocks until the test kills this process

		return
	}

	parent := exec.Command(os.Args[0], "-test.run=^TestChildDiesWithParent$")
	parent.Env = append(os.Environ(), helperEnv+"=1")

	stdin, err := parent.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}

	defer stdin.Close() //nolint:errcheck

	stdout, err := parent.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}

	if err := parent.Start(); err != nil {
		t.Fatal(err)
	}

	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "PID ") {
		t.Fatalf("parent said %q (%v)", line, err)
	}

	child, err := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(line, "PID ")))
	if err != nil {
		t.Fatal(err)
	}

	if !alive(child) {
		t.Fatalf("child %d is not running before its parent is killed", child)
	}

	if err := parent.Process.Kill(); err != nil {
		t.Fatal(err)
	}

	parent.Wait() //nolint:errcheck // killed on purpose

	deadline := time.Now().Add(10 * time.Second)
	for alive(child) {
		if time.Now().After(deadline) {
			syscall.Kill(child, syscall.SIGKILL) //nolint:errcheck

			t.Fatalf("child %d outlived its killed parent", child)
		}

		time.Sleep(20 * time.Millisecond) // poll interval of a condition with a deadline
	}
}

// alive reports whether pid runs; a zombie waiting for init to reap it counts as dead.
func alive(pid int) bool {
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}

	fields := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))

	return len(fields) > 0 && fields[0] != "Z" && fields[0] != "X"
}

func TestProcessStopAndExit(t *testing.T) {
	dir := t.TempDir()

	p, err := startProcess("/bin/sleep", dir, "sleeper", []string{"600"})
	if err != nil {
		t.Fatal(err)
	}

	if err := p.stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}

	if err := p.stop(); err != nil {
		t.Fatalf("second stop: %v", err)
	}

	taken, err := startProcess("/bin/sh", dir, "taken", []string{"-c", "echo 'listen tcp 127.0.0.1:1: bind: address already in use'; exit 1"})
	if err != nil {
		t.Fatal(err)
	}

	<-taken.done

	if !taken.portInUse() {
		t.Error("a bind failure is not recognised as a taken port")
	}

	if err := taken.exitError(); !strings.Contains(err.Error(), "address already in use") || !strings.Contains(err.Error(), "taken.log") {
		t.Errorf("exit error %q does not quote the log", err)
	}

	if _, err := findBinary(dir, "sleeper.log"); !errors.Is(err, ErrBinaryMissing) {
		t.Errorf("a non-executable file is accepted as a binary: %v", err)
	}
}
