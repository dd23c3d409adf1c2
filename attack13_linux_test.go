package main

// Attacks on a copy loop that skipped the read that says EAGAIN (commit
// 4542d4d, reverted): with TCP_INQ saying nothing was left, it waited
// for the next message inside the same RawConn.Read; but TCP_INQ does not
// count a reset queued behind the last message, and the wake-up that
// carried it was spent, so the pair stayed open for good. The copier
// reads until EAGAIN, and these tests keep it so. Real sockets on
// 127.0.0.1; every wait is bounded, and nothing sleeps to synchronise.

import (
	"bytes"
	"io"
	"net"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// tcpState returns c's TCP state (unix.BPF_TCP_*), from TCP_INFO.
func tcpState(t *testing.T, c *net.TCPConn) uint8 {
	t.Helper()
	raw, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var info *unix.TCPInfo
	var ierr error
	if err := raw.Control(func(fd uintptr) { info, ierr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO) }); err != nil || ierr != nil {
		t.Fatalf("TCP_INFO: %v %v", err, ierr)
	}
	return info.State
}

// onlyPair returns the proxy's one pair's sockets.
func onlyPair(t *testing.T, rig *proxyRig) (client, server *net.TCPConn) {
	t.Helper()
	rig.p.reg.mu.Lock()
	defer rig.p.reg.mu.Unlock()
	if rig.p.reg.n != 1 {
		t.Fatalf("%d pairs; want 1", rig.p.reg.n)
	}
	return rig.p.reg.head.client, rig.p.reg.head.server
}

// parkedIn reports whether some goroutine is parked waiting for a socket
// to be writable with every one of frames on its stack.
func parkedIn(frames ...string) bool {
	buf := make([]byte, 1<<20)
	for _, g := range strings.Split(string(buf[:runtime.Stack(buf, true)]), "\n\n") {
		if !strings.Contains(g, "[IO wait") || !strings.Contains(g, "waitWrite") {
			continue
		}
		all := true
		for _, f := range frames {
			all = all && strings.Contains(g, f)
		}
		if all {
			return true
		}
	}
	return false
}

// dialSmallWindow dials addr with a fixed receive buffer (no autotuning),
// so that what it does not read soon fills the way to it.
func dialSmallWindow(t *testing.T, addr string) *net.TCPConn {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second, Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		if err := rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, 64<<10) }); err != nil {
			return err
		}
		return serr
	}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	tc := c.(*net.TCPConn)
	_ = tc.SetDeadline(time.Now().Add(20 * time.Second))
	t.Cleanup(func() { _ = tc.Close() })
	return tc
}

// readToEnd reads c until EOF or an error and returns what it read and
// the error (nil at EOF).
func readToEnd(c *net.TCPConn, d time.Duration) ([]byte, error) {
	_ = c.SetReadDeadline(time.Now().Add(d))
	var got bytes.Buffer
	_, err := io.Copy(&got, struct{ io.Reader }{c})
	return got.Bytes(), err
}

// TestAttackServerResetAfterDataIsPassedOn: a server that answers, then
// sends its last bytes and resets the connection (close with unread data,
// or SO_LINGER 0) before the proxy reads them. The read that takes the
// last bytes finds nothing more queued (TCP_INQ counts a FIN, not a
// reset), so the copier waits inside the same RawConn.Read; the reset
// came before that read, and no later event wakes it. The client got
// every byte but never learns that the server is gone, and the pair
// stays open for good.
func TestAttack13ServerResetAfterDataIsPassedOn(t *testing.T) {
	cmds := make(chan string)
	done := make(chan struct{})
	srv := startLoopServer(t, func(c *net.TCPConn) {
		defer close(done)
		buf := make([]byte, 64)
		for range 5 {
			if _, err := io.ReadFull(c, buf[:4]); err != nil {
				return
			}
			if _, err := io.WriteString(c, "pong"); err != nil {
				return
			}
		}
		chunk := bytes.Repeat([]byte{'x'}, chunkSize)
		for cmd := range cmds {
			switch cmd {
			case "chunk":
				_ = c.SetWriteDeadline(time.Now().Add(5 * time.Second))
				if _, err := c.Write(chunk); err != nil {
					return
				}
			case "end":
				_, _ = io.WriteString(c, "last")
				_ = c.SetLinger(0) // the close resets
				_ = c.Close()
				return
			}
		}
	})
	rig := startProxyRig(t, srv.backend("a"), 0, 0)
	c := dialSmallWindow(t, rig.addr)
	for range 5 { // a conversation (with 4542d4d: TCP_INQ on for the server's socket)
		echoRoundWant(t, c, "ping", "pong")
	}
	_, server := onlyPair(t, rig)
	// The client reads nothing while the server sends, until the down
	// copier waits to write to the client: then nothing reads the
	// server's socket, and its last bytes and reset queue there.
	sent := 0
	deadline := time.Now().Add(10 * time.Second)
	for !parkedIn("(*pair).serverToClient", "(*copier).send") {
		if time.Now().After(deadline) {
			t.Fatalf("after %d bytes the proxy still does not wait to write to the client", sent)
		}
		cmds <- "chunk"
		sent += chunkSize
	}
	t.Logf("the copier waits to write after %d bytes", sent)
	cmds <- "end"
	<-done
	waitUntil(t, 5*time.Second, "the proxy's server socket reset", func() bool { return tcpState(t, server) == unix.BPF_TCP_CLOSE })
	got, err := readToEnd(c, 5*time.Second)
	if len(got) != sent+len("last") || !bytes.HasSuffix(got, []byte("last")) {
		t.Errorf("the client read %d bytes ending %q; want %d ending %q", len(got), got[max(0, len(got)-4):], sent+4, "last")
	}
	if isTimeoutErr(err) {
		t.Fatalf("the server reset the connection, but 5s later the client's connection is still open (%d pairs)", rig.p.reg.count())
	}
	waitUntil(t, 5*time.Second, "the pair closed", func() bool { return rig.p.reg.count() == 0 })
}

// TestAttackClientResetAfterDataIsPassedOn: the same from the other side:
// a client that sends its last bytes and resets while the proxy waits for
// the server to take earlier ones. The server gets every byte, then must
// see the connection end.
func TestAttack13ClientResetAfterDataIsPassedOn(t *testing.T) {
	resume := make(chan struct{})
	type result struct {
		got []byte
		err error
	}
	res := make(chan result, 1)
	srv := startLoopServer(t, func(c *net.TCPConn) {
		_ = c.SetReadBuffer(64 << 10) // no autotuning: the way fills sooner
		buf := make([]byte, 4)
		for range 5 {
			if _, err := io.ReadFull(c, buf); err != nil {
				res <- result{nil, err}
				return
			}
			if _, err := io.WriteString(c, "pong"); err != nil {
				res <- result{nil, err}
				return
			}
		}
		<-resume // reads nothing meanwhile
		got, err := readToEnd(c, 5*time.Second)
		res <- result{got, err}
	})
	rig := startProxyRig(t, srv.backend("a"), 0, 0)
	c := dialTCP(t, rig.addr)
	for range 5 { // a conversation (with 4542d4d: TCP_INQ on for the client's socket)
		echoRoundWant(t, c, "ping", "pong")
	}
	client, _ := onlyPair(t, rig)
	chunk := bytes.Repeat([]byte{'y'}, chunkSize)
	sent := 0
	deadline := time.Now().Add(10 * time.Second)
	for !parkedIn("(*pair).clientToServer", "(*copier).send") {
		if time.Now().After(deadline) {
			close(resume)
			t.Fatalf("after %d bytes the proxy still does not wait to write to the server", sent)
		}
		_ = c.SetWriteDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write(chunk); err != nil {
			close(resume)
			t.Fatal(err)
		}
		sent += len(chunk)
	}
	t.Logf("the copier waits to write after %d bytes", sent)
	_, _ = io.WriteString(c, "last")
	// A reset discards what the peer has not acknowledged: wait until
	// the proxy's socket holds every byte.
	waitUntil(t, 5*time.Second, "the client's bytes acknowledged", func() bool { return outq(t, c) == 0 })
	_ = c.SetLinger(0)
	_ = c.Close()
	waitUntil(t, 5*time.Second, "the proxy's client socket reset", func() bool { return tcpState(t, client) == unix.BPF_TCP_CLOSE })
	close(resume)
	r := <-res
	if len(r.got) != sent+len("last") || !bytes.HasSuffix(r.got, []byte("last")) {
		t.Errorf("the server read %d bytes; want %d ending %q", len(r.got), sent+4, "last")
	}
	if isTimeoutErr(r.err) {
		t.Fatalf("the client reset the connection, but 5s later the server's connection is still open (%d pairs)", rig.p.reg.count())
	}
	waitUntil(t, 5*time.Second, "the pair closed", func() bool { return rig.p.reg.count() == 0 })
}

// TestAttackServerResetRightAfterAnswer: the realistic form, with no help
// to line up the race: a server that answers its last request and at once
// closes with a reset, many times. Each time the client must see its
// connection end after the answer.
func TestAttack13ServerResetRightAfterAnswer(t *testing.T) {
	srv := startLoopServer(t, func(c *net.TCPConn) {
		buf := make([]byte, 4)
		for range 5 {
			if _, err := io.ReadFull(c, buf); err != nil {
				return
			}
			if _, err := io.WriteString(c, "pong"); err != nil {
				return
			}
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			return
		}
		_, _ = io.WriteString(c, "bye!")
		_ = c.SetLinger(0)
	})
	rig := startProxyRig(t, srv.backend("a"), 0, 0)
	stuck := 0
	const rounds = 10
	for range rounds {
		c := dialTCP(t, rig.addr)
		for range 5 {
			echoRoundWant(t, c, "ping", "pong")
		}
		echoRoundWant(t, c, "quit", "bye!")
		_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
		n, err := c.Read(make([]byte, 16))
		if n > 0 {
			t.Fatalf("read %d more bytes after the last answer", n)
		}
		if isTimeoutErr(err) {
			stuck++
		}
		_ = c.Close()
	}
	if stuck > 0 {
		t.Fatalf("%d of %d connections stayed open 2s after their server reset them", stuck, rounds)
	}
}

// chunkSize is below spliceMin: once the copier waits to write, what
// queues behind it is read, not spliced.
const chunkSize = 1000

// outq returns what c has sent that its peer has not acknowledged.
func outq(t *testing.T, c *net.TCPConn) int {
	t.Helper()
	raw, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var n int
	var ierr error
	if err := raw.Control(func(fd uintptr) { n, ierr = unix.IoctlGetInt(int(fd), unix.SIOCOUTQ) }); err != nil || ierr != nil {
		t.Fatalf("SIOCOUTQ: %v %v", err, ierr)
	}
	return n
}
