package main

import (
	"bufio"
	"io"
	"net"
	"testing"
	"time"
)

// readLineThenClose reads one line and closes without answering: it may
// have acted on the line (a fire-and-forget record).
func readLineThenClose(c *net.TCPConn) {
	_, _ = bufio.NewReader(c).ReadString('\n')
}

// resetAtOnce resets the connection without reading, as a listener closed
// with connections in its accept queue does.
func resetAtOnce(c *net.TCPConn) {
	_ = c.SetLinger(0)
}

// TestPairReplaysUnansweredBytes: a server that resets a connection before
// it answered is replaced by the current backend, which gets the client's
// bytes again; the client never sees the failure.
func TestPairReplaysUnansweredBytes(t *testing.T) {
	for _, tc := range []struct {
		name   string
		handle func(*net.TCPConn)
	}{
		{"reset", resetAtOnce},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bad := startLoopServer(t, tc.handle)
			good := startLoopServer(t, taggedEcho("good"))
			rig := startProxyRig(t, bad.backend("bad"), 2*time.Second, 0)
			c := dialTCP(t, rig.addr)
			defer c.Close()
			// The route moves on only after the client's bytes went to
			// the bad server: as when a dying container is replaced.
			_, _ = io.WriteString(c, "hello\n")
			bad.waitAccepted(t)
			rig.route.store(good.backend("good"))
			r := bufio.NewReader(c)
			_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
			got, err := r.ReadString('\n')
			if err != nil || got != "good hello\n" {
				t.Fatalf("got %q, %v; want %q", got, err, "good hello\n")
			}
			// The pair is committed now: it keeps working.
			if got, err := lineRound(c, r, "again"); err != nil || got != "good again" {
				t.Fatalf("got %q, %v; want %q", got, err, "good again")
			}
		})
	}
}

// TestPairNoResendAfterFIN: a server that read the client's bytes and
// closed may have acted on them (RFC 9110 §9.2.2): they are never sent to
// another one, and the client sees the close.
func TestPairNoResendAfterFIN(t *testing.T) {
	records := make(chan string, 8)
	actThenClose := func(c *net.TCPConn) {
		line, _ := bufio.NewReader(c).ReadString('\n')
		records <- line
	}
	first := startLoopServer(t, actThenClose)
	second := startLoopServer(t, actThenClose)
	rig := startProxyRig(t, first.backend("first"), 2*time.Second, 0)
	c := dialTCP(t, rig.addr)
	_, _ = io.WriteString(c, "charge 10\n")
	if got := <-records; got != "charge 10\n" {
		t.Fatalf("first server read %q", got)
	}
	rig.route.store(second.backend("second"))
	expectClosed(t, c, 5*time.Second)
	select {
	case got := <-records:
		t.Fatalf("the request was acted on twice: a second server read %q", got)
	default:
	}
	if n := second.acceptedCount(); n != 0 {
		t.Errorf("the second server got %d connections; want 0", n)
	}
}

// TestPairNoReplayWhenOff: with -replay_bytes 0 the client sees the
// server's close.
func TestPairNoReplayWhenOff(t *testing.T) {
	bad := startLoopServer(t, readLineThenClose)
	rig := startProxyRig(t, bad.backend("bad"), 0, 0, func(p *proxy) { p.replayMax = 0 })
	c := dialTCP(t, rig.addr)
	defer c.Close()
	_, _ = io.WriteString(c, "hello\n")
	expectClosed(t, c, 5*time.Second)
}

// TestPairNoReplayAfterAnswer: once the server answered, its close is
// passed on, never replayed.
func TestPairNoReplayAfterAnswer(t *testing.T) {
	answerThenClose := func(c *net.TCPConn) {
		_, _ = bufio.NewReader(c).ReadString('\n')
		_, _ = io.WriteString(c, "bye\n")
	}
	bad := startLoopServer(t, answerThenClose)
	good := startLoopServer(t, taggedEcho("good"))
	rig := startProxyRig(t, bad.backend("bad"), 2*time.Second, 0)
	c := dialTCP(t, rig.addr)
	defer c.Close()
	_, _ = io.WriteString(c, "hello\n")
	bad.waitAccepted(t)
	rig.route.store(good.backend("good"))
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "bye\n" {
		t.Fatalf("got %q, %v; want %q then EOF", got, err, "bye\n")
	}
}

// acceptedCount reports how many connections s has accepted.
func (s *loopServer) acceptedCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.accepted
}

// waitAccepted waits until s has accepted a connection.
func (s *loopServer) waitAccepted(t testing.TB) {
	t.Helper()
	waitUntil(t, 5*time.Second, "a connection accepted", func() bool { return s.acceptedCount() > 0 })
}

// TestPairNoReplayToTheSameContainer: a container that still takes
// connections and closed one unanswered meant it; the request is not sent
// to it again, and the client sees the close once the hold runs out.
func TestPairNoReplayToTheSameContainer(t *testing.T) {
	bad := startLoopServer(t, readLineThenClose)
	rig := startProxyRig(t, bad.backend("bad"), 300*time.Millisecond, 0)
	c := dialTCP(t, rig.addr)
	defer c.Close()
	_, _ = io.WriteString(c, "hello\n")
	expectClosed(t, c, 5*time.Second)
	n := bad.acceptedCount()
	if n != 1 {
		t.Errorf("the container got %d connections; want 1 (no replay to it)", n)
	}
}
