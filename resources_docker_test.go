package main

// Resource pressure: running out of file descriptors, and thousands of idle
// connections. The proxy runs as its own process here, so that its fd
// limit and its figures are its own (and the race detector's goroutine
// limit does not apply to it).

import (
	"io"
	"net"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestDockerAcceptSurvivesEMFILE: out of file descriptors, the accept loop
// backs off and keeps the port; once descriptors are free again, waiting
// and new connections are served.
func TestDockerAcceptSurvivesEMFILE(t *testing.T) {
	tag := newTag(t, "v1")
	startCtr(t, tag, "-http", "", "-echo", ":7")
	port := freePort(t)
	addr := "127.0.0.1:" + strconv.Itoa(port)
	// A long hold: a connection accepted while no descriptor is left for
	// its dial waits until the test frees some, however slow the machine.
	pp := startBinary(t, "ulimit -n 48;", "-address", "127.0.0.1", "-ports", strconv.Itoa(port)+"=7", "-tag", tag,
		"-hold_timeout", "60s")
	pp.logs.waitLog(t, 10*time.Second, "serving")

	// Each forwarded connection takes two descriptors: fill the proxy with
	// connections until one is no longer served.
	var served []*net.TCPConn
	defer func() {
		for _, c := range served {
			_ = c.Close()
		}
	}()
	var waiting []*net.TCPConn // accepted but not dialed, or in the backlog
	for len(waiting) == 0 {
		if len(served) > 48 {
			t.Fatal("48 connections served under ulimit -n 48: the limit is not in force")
		}
		c := dialTCP(t, addr)
		defer c.Close()
		if echoesWithin(c, "probe\n", time.Second) {
			served = append(served, c)
		} else {
			waiting = append(waiting, c)
		}
	}
	for range 5 {
		c := dialTCP(t, addr)
		defer c.Close()
		_, _ = io.WriteString(c, "probe\n")
		waiting = append(waiting, c)
	}
	pp.logs.waitLog(t, 10*time.Second, "accept failed")
	if line := pp.logs.lines("accept failed")[0]; !strings.Contains(line["err"].(string), "too many open files") {
		t.Fatalf("accept failed with %v; want EMFILE", line["err"])
	}
	// Free descriptors: the waiting connections are served now, the bytes
	// they sent first included, and so is a new one.
	for _, c := range served {
		_ = c.Close()
	}
	served = nil
	for _, c := range waiting {
		_ = c.SetDeadline(time.Now().Add(30 * time.Second))
		expectEcho(t, c, "probe\n")
		echoRound(t, c, "after the shortage")
	}
	c := dialTCP(t, addr)
	defer c.Close()
	echoRound(t, c, "a new connection")
	select {
	case <-pp.exited:
		t.Fatalf("the proxy exited: %v", pp.err)
	default:
	}
}

// TestDockerManyIdleConnections: 5,000 idle connections through the proxy
// do not stop a new one from being served.
func TestDockerManyIdleConnections(t *testing.T) {
	const idle = 5000
	raiseFDLimit(t, 3*idle)
	tag := newTag(t, "v1")
	startCtr(t, tag, "-http", "", "-echo", ":7")
	port := freePort(t)
	addr := "127.0.0.1:" + strconv.Itoa(port)
	pp := startBinary(t, "", "-address", "127.0.0.1", "-ports", strconv.Itoa(port)+"=7", "-tag", tag)
	pp.logs.waitLog(t, 10*time.Second, "serving")

	conns := make([]*net.TCPConn, 0, idle)
	defer func() {
		for _, c := range conns {
			_ = c.Close()
		}
	}()
	for range idle {
		conns = append(conns, dialTCP(t, addr))
	}
	// Every one of them is carried: the last one and a sample echo.
	for i := 0; i < idle; i += idle / 10 {
		echoRound(t, conns[i], "idle "+strconv.Itoa(i))
	}
	echoRound(t, conns[idle-1], "the last idle one")
	c := dialTCP(t, addr)
	defer c.Close()
	echoRound(t, c, "a new connection beside 5000 idle ones")
	if n := len(pp.logs.lines("accept failed")); n > 0 {
		t.Errorf("accept failed %d times", n)
	}
}

// raiseFDLimit raises the soft fd limit of the test process (and so of the
// processes it starts) to at least n, up to the hard limit.
func raiseFDLimit(t testing.TB, n uint64) {
	t.Helper()
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	if uint64(lim.Max) < n {
		t.Fatalf("hard fd limit %d is below the %d the test needs", lim.Max, n)
	}
	if uint64(lim.Cur) >= n {
		return
	}
	old := lim
	lim.Cur = lim.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &old) })
}

// echoesWithin writes msg and reports whether it came back within d.
func echoesWithin(c *net.TCPConn, msg string, d time.Duration) bool {
	_ = c.SetDeadline(time.Now().Add(d))
	defer func() { _ = c.SetDeadline(time.Time{}) }()
	if _, err := io.WriteString(c, msg); err != nil {
		return false
	}
	got := make([]byte, len(msg))
	_, err := io.ReadFull(c, got)
	return err == nil && string(got) == msg
}

// expectEcho reads msg, sent earlier, back from c.
func expectEcho(t testing.TB, c *net.TCPConn, msg string) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != msg {
		t.Fatalf("read %q, %v; want %q", got, err, msg)
	}
}
