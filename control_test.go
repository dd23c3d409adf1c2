package main

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestAutoControlPath: one path per address and set of host ports, in any
// order; a long list is hashed to a path that fits a unix socket address.
func TestAutoControlPath(t *testing.T) {
	a := autoControlPath("0.0.0.0", []portMap{{80, 80}, {443, 3000}})
	if want := controlDir + "/0.0.0.0-80,443.sock"; a != want {
		t.Errorf("got %s; want %s", a, want)
	}
	if b := autoControlPath("0.0.0.0", []portMap{{443, 3000}, {80, 80}}); b != a {
		t.Errorf("the order of -ports changed the path: %s and %s", a, b)
	}
	if c := autoControlPath("127.0.0.1", []portMap{{80, 80}, {443, 3000}}); c == a {
		t.Errorf("two addresses share the path %s", c)
	}
	var many []portMap
	for p := uint16(10000); p < 10040; p++ {
		many = append(many, portMap{p, p})
	}
	long := autoControlPath("fd00:1234:5678:9abc:def0:1234:5678:9abc", many)
	if len(long) > maxUnixPath || !strings.HasPrefix(long, controlDir+"/") {
		t.Errorf("path for 40 ports %q: %d bytes; want at most %d, in %s", long, len(long), maxUnixPath, controlDir)
	}
	if other := autoControlPath("fd00:1234:5678:9abc:def0:1234:5678:9abc", many[1:]); other == long {
		t.Errorf("two hashed paths are the same: %s", long)
	}
}

// TestListenControl: mode 0600 in a folder it makes; a socket left by a
// process that is gone is replaced, one that a process listens on is not,
// and neither is a file that is not a socket.
func TestListenControl(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "run")
	path := filepath.Join(dir, "p.sock")
	ln, err := listenControl(path)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 || fi.Mode().Type() != os.ModeSocket {
		t.Errorf("mode %v; want a socket with 0600", fi.Mode())
	}
	if _, err := listenControl(path); err == nil || !strings.Contains(err.Error(), "another process listens") {
		t.Errorf("second listen: %v; want refused, another process listens", err)
	}
	_ = ln.Close()
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("after close the socket file is still there: %v", err)
	}

	// A socket whose process is gone: bound, never unlinked.
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Bind(fd, &syscall.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
	_ = syscall.Close(fd)
	ln, err = listenControl(path)
	if err != nil {
		t.Fatalf("over a stale socket: %v; want it replaced", err)
	}
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatalf("dial the new socket: %v", err)
	}
	_ = c.Close()
	_ = ln.Close()

	if err := os.WriteFile(path, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := listenControl(path); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("over a plain file: %v; want refused", err)
	}
	if data, _ := os.ReadFile(path); string(data) != "x" {
		t.Error("the plain file was changed")
	}
}
