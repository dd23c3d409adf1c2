package main

// Regression tests of the connection path under attack: each one failed
// before the fix it names. Real sockets on 127.0.0.1, no Docker.

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// sendUrgent sends one byte of TCP urgent data (MSG_OOB) on c.
func sendUrgent(t testing.TB, c *net.TCPConn, b byte) {
	t.Helper()
	raw, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	if err := raw.Write(func(fd uintptr) bool {
		serr = unix.Sendto(int(fd), []byte{b}, unix.MSG_OOB, nil)
		return true
	}); err != nil || serr != nil {
		t.Fatalf("send urgent byte: %v %v", err, serr)
	}
}

// TestPairUrgentByteDoesNotStall: an urgent byte in the stream stopped the
// splice at the urgent mark: the bytes after it never arrived and the copy
// loop spun. Now the bytes around it are delivered, as a plain read
// delivers them, and the pair closes at EOF.
func TestPairUrgentByteDoesNotStall(t *testing.T) {
	for _, tc := range []struct {
		name    string
		pause   bool // the urgent byte is the last one queued for a while
		backlog int  // bytes sent just before it, to be spliced
	}{
		{"in a burst", false, 0},
		{"alone in the queue", true, 0},
		{"in a spliced backlog", false, 1 << 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := startLoopServer(t, echoConn)
			rig := startProxyRig(t, srv.backend("a"), 0, 0)
			c := dialTCP(t, rig.addr)
			echoRound(t, c, "abc") // answered: committed
			backlog := bytes.Repeat([]byte{'b'}, tc.backlog)
			echoed := make(chan error, 1)
			go func() { // the echo of the backlog, read while it is sent
				_, err := io.ReadFull(c, make([]byte, tc.backlog))
				echoed <- err
			}()
			if _, err := c.Write(backlog); err != nil {
				t.Fatal(err)
			}
			sendUrgent(t, c, '!')
			if err := <-echoed; err != nil {
				t.Fatalf("the backlog's echo: %v", err)
			}
			if tc.pause {
				expectSilent(t, c, 100*time.Millisecond)
			}
			if _, err := io.WriteString(c, "def"); err != nil {
				t.Fatal(err)
			}
			_ = c.CloseWrite()
			got, err := io.ReadAll(c)
			if err != nil || string(got) != "def" {
				t.Fatalf("after the urgent byte got %q, %v; want %q then EOF", got, err, "def")
			}
			waitUntil(t, 5*time.Second, "the pair closed after both sides' EOF", func() bool { return rig.p.reg.count() == 0 })
		})
	}
}

// TestPairServerHalfClosesFirst: a server that half-closes on accept and
// then reads to EOF is not a failed connection: it gets every byte the
// client sends, and the client sees its EOF.
func TestPairServerHalfClosesFirst(t *testing.T) {
	got := make(chan []byte, 1)
	srv := startLoopServer(t, func(c *net.TCPConn) {
		_ = c.CloseWrite()
		b, _ := io.ReadAll(c)
		got <- b
	})
	rig := startProxyRig(t, srv.backend("a"), time.Second, 0)
	c := dialTCP(t, rig.addr)
	msg := []byte("written after the server's FIN\n")
	for range 3 {
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
	}
	if b, err := io.ReadAll(c); err != nil || len(b) != 0 {
		t.Fatalf("client read %q, %v; want EOF", b, err)
	}
	_ = c.CloseWrite()
	select {
	case b := <-got:
		if want := bytes.Repeat(msg, 3); !bytes.Equal(b, want) {
			t.Fatalf("server read %q; want %q", b, want)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("server never reached EOF")
	}
}

// TestPairLargeReplayNoDeadlock: a large -replay_bytes deadlocked a pair:
// the client side wrote to the server holding the lock that the server
// side needed to pass on the server's first byte. A server that reads
// nothing until it has greeted, and greets only once the client's writes
// stall (the proxy's write to it blocks), shows it: the greeting never
// came.
func TestPairLargeReplayNoDeadlock(t *testing.T) {
	const size = 48 << 20 // more than the loopback socket buffers hold
	stalled, greeted := make(chan struct{}), make(chan struct{})
	got := make(chan int64, 1)
	srv := startLoopServer(t, func(c *net.TCPConn) {
		<-stalled
		_, _ = io.WriteString(c, "hello\n")
		<-greeted
		n, _ := io.Copy(io.Discard, c)
		got <- n
	})
	rig := startProxyRig(t, srv.backend("a"), time.Second, 0, func(p *proxy) { p.replayMax = 64 << 20 })
	c := dialTCP(t, rig.addr)
	_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
	werr := make(chan error, 1)
	go func() {
		buf := make([]byte, 1<<20)
		once := sync.OnceFunc(func() { close(stalled) })
		defer once()
		for left := size; left > 0; {
			// A write that makes no progress for a while is the
			// stall the server waits for.
			_ = c.SetWriteDeadline(time.Now().Add(200 * time.Millisecond))
			n, err := c.Write(buf[:min(len(buf), left)])
			left -= n
			if isTimeoutErr(err) {
				once()
				continue
			}
			if err != nil {
				werr <- err
				return
			}
		}
		_ = c.CloseWrite()
		werr <- nil
	}()
	if _, err := io.ReadFull(c, make([]byte, len("hello\n"))); err != nil {
		t.Fatalf("the greeting never came while the client's writes stalled: %v", err)
	}
	close(greeted)
	if err := <-werr; err != nil {
		t.Fatalf("write: %v", err)
	}
	if n := <-got; n != size {
		t.Fatalf("the server read %d bytes; want %d", n, size)
	}
}

// TestPairStaleResetNoteIgnored: a reset that the client side's write read
// on an earlier connection (the note came after the move) must not turn a
// later FIN into a resend.
func TestPairStaleResetNoteIgnored(t *testing.T) {
	acted := make(chan string, 2)
	closeNow := make(chan struct{})
	first := startLoopServer(t, resetAtOnce)
	second := startLoopServer(t, func(c *net.TCPConn) {
		line := make([]byte, len("charge 10\n"))
		if _, err := io.ReadFull(c, line); err == nil {
			acted <- string(line)
		}
		<-closeNow // all read: the close is a FIN
	})
	third := startLoopServer(t, func(c *net.TCPConn) {
		if b, _ := io.ReadAll(c); len(b) > 0 {
			acted <- "third: " + string(b)
		}
	})
	rig := startProxyRig(t, first.backend("first"), 2*time.Second, 0)
	c := dialTCP(t, rig.addr)
	_, _ = io.WriteString(c, "charge 10\n")
	first.waitAccepted(t)
	rig.route.store(second.backend("second")) // reset: moved to the second
	if got := <-acted; got != "charge 10\n" {
		t.Fatalf("second read %q", got)
	}
	rig.p.reg.mu.Lock()
	pr := rig.p.reg.head
	rig.p.reg.mu.Unlock()
	pr.noteReset(&net.TCPConn{}) // the first connection's reset, noted late
	rig.route.store(third.backend("third"))
	close(closeNow)
	expectClosed(t, c, 5*time.Second)
	n := third.acceptedCount()
	if n != 0 {
		t.Fatalf("after the second server read the request and sent FIN, it was resent to a third (%d connections)", n)
	}
}

// readNeverAnswer reads everything and never answers, so the proxy keeps
// what each client sent; it counts what it read in total.
func readNeverAnswer(total *atomic.Int64) func(c *net.TCPConn) {
	return func(c *net.TCPConn) {
		buf := make([]byte, 64<<10)
		for {
			n, err := c.Read(buf)
			total.Add(int64(n))
			if err != nil {
				return
			}
		}
	}
}

// TestPairReplayBudget: the kept bytes of all connections together stay
// under replayBudget, in memory too; a connection past it keeps nothing,
// and still works.
func TestPairReplayBudget(t *testing.T) {
	var read atomic.Int64
	srv := startLoopServer(t, readNeverAnswer(&read))
	rig := startProxyRig(t, srv.backend("a"), time.Second, 0, func(p *proxy) { p.replayMax = maxReplayBytes })
	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	const clients = replayBudget/maxReplayBytes + 32
	msg := make([]byte, maxReplayBytes-1)
	for range clients {
		c := dialTCP(t, rig.addr)
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
	}
	waitUntil(t, 20*time.Second, "every byte at the server", func() bool { return read.Load() == int64(clients*len(msg)) })
	if k := rig.p.kept.Load(); k > replayBudget || k < replayBudget-maxReplayBytes {
		t.Fatalf("kept %d bytes; want the budget, %d, nearly spent and never passed", k, replayBudget)
	}
	var after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&after)
	if grown := int64(after.HeapAlloc) - int64(before.HeapAlloc); grown > replayBudget+16<<20 {
		t.Fatalf("the heap grew by %d MiB for %d clients of 1 MiB; the budget is %d MiB", grown>>20, clients, replayBudget>>20)
	}
}

// TestPairReplayBudgetNotPinned: a connection is charged for the buffer
// that holds what its client sent, not for -replay_bytes, so clients of
// one byte each cannot spend the budget and turn resends off for all.
func TestPairReplayBudgetNotPinned(t *testing.T) {
	var read atomic.Int64
	srv := startLoopServer(t, readNeverAnswer(&read))
	rig := startProxyRig(t, srv.backend("a"), time.Second, 0, func(p *proxy) { p.replayMax = maxReplayBytes })
	const clients = 200
	for range clients {
		c := dialTCP(t, rig.addr)
		if _, err := io.WriteString(c, "x"); err != nil {
			t.Fatal(err)
		}
	}
	waitUntil(t, 10*time.Second, "every byte kept", func() bool { return rig.p.kept.Load() == clients*keptMin })
}

// TestProxyShutdownClosesEveryPair: after a failed replay a pair belonged
// to no backend, so the close at the end of -shutdown_timeout missed it and
// shutdown hung. Now every pair is in one registry from accept to close:
// a held one, one whose server half-closed, one whose resend failed; the
// shutdown closes them all.
func TestProxyShutdownClosesEveryPair(t *testing.T) {
	halfClose := startLoopServer(t, func(c *net.TCPConn) {
		_ = c.CloseWrite()
		_, _ = io.Copy(io.Discard, c)
	})
	reset := startLoopServer(t, resetAtOnce)
	rig := startProxyRig(t, halfClose.backend("fin"), 30*time.Second, 0)

	fin := dialTCP(t, rig.addr) // its server sent FIN; the client stays
	if b, err := io.ReadAll(fin); err != nil || len(b) != 0 {
		t.Fatalf("read %q, %v; want EOF", b, err)
	}
	rig.route.store(reset.backend("reset"))
	resent := dialTCP(t, rig.addr) // reset, and no other container to resend to
	_, _ = io.WriteString(resent, "hello\n")
	reset.waitAccepted(t)
	rig.route.store(nil)
	held := dialTCP(t, rig.addr) // no backend: held
	waitUntil(t, 5*time.Second, "three pairs", func() bool { return rig.p.reg.count() == 3 })

	if n := rig.p.shutdown(); n != 3 {
		t.Errorf("shutdown closed %d pairs; want 3", n)
	}
	for _, c := range []*net.TCPConn{fin, resent, held} {
		expectClosed(t, c, 5*time.Second)
	}
	waitUntil(t, 5*time.Second, "every pair closed", func() bool { return rig.p.reg.count() == 0 })
}

// TestProxyMaxConnsServesEveryPort: an accept loop waiting for a client on
// its port held the only -max_conns slot, and a client of another port was
// never served.
func TestProxyMaxConnsServesEveryPort(t *testing.T) {
	srv := startLoopServer(t, echoConn)
	ports := []portMap{{host: 1, container: srv.port}, {host: 2, container: srv.port}}
	route := newRouter()
	route.store(newBackend("a", mustAddr("127.0.0.1"), ports))
	p := newProxy(route, ports, 0, 1, slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	lns := []*net.TCPListener{listenLoopback(t), listenLoopback(t)}
	for i, ln := range lns {
		wg.Go(func() { _ = p.serve(ctx, ln, i) })
	}
	defer func() { cancel(); wg.Wait() }()
	for round := range 3 { // each port in turn, the slot freed in between
		for _, ln := range []*net.TCPListener{lns[1], lns[0]} {
			c := dialTCP(t, ln.Addr().String())
			echoRound(t, c, "hello")
			_ = c.Close()
			waitUntil(t, 5*time.Second, "the pair closed", func() bool { return p.reg.count() == 0 })
			_ = round
		}
	}
}

// TestListenNetworkIPv4Only: -address 0.0.0.0 also listened on [::].
func TestListenNetworkIPv4Only(t *testing.T) {
	for addr, want := range map[string]string{
		"0.0.0.0": "tcp4", "127.0.0.1": "tcp4", "::": "tcp", "::1": "tcp6", "fe80::1": "tcp6",
	} {
		if got := listenNetwork(addr); got != want {
			t.Errorf("listenNetwork(%q) = %q; want %q", addr, got, want)
		}
	}
	if ln6, err := net.Listen("tcp6", "[::1]:0"); err != nil {
		t.Logf("no IPv6 loopback here (%v): the listener check is skipped", err)
		return
	} else {
		_ = ln6.Close()
	}
	ln, err := net.Listen(listenNetwork("0.0.0.0"), "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	if c, err := net.DialTimeout("tcp6", net.JoinHostPort("::1", itoa(port)), time.Second); err == nil {
		_ = c.Close()
		t.Fatalf("an IPv6 client reached a proxy told to listen on 0.0.0.0:%d", port)
	}
}

// TestProxyDialErrorIsLogged: a dial that failed was logged as "no ready
// container" while a container served, and one dial could use the whole
// hold. The log says what failed, and the hold has room for retries.
func TestProxyDialErrorIsLogged(t *testing.T) {
	ln := listenLoopback(t)
	dead := uint16(ln.Addr().(*net.TCPAddr).Port)
	_ = ln.Close() // nothing listens: connection refused
	route := newRouter()
	route.store(newBackend("dead", mustAddr("127.0.0.1"), []portMap{{host: 1, container: dead}}))
	var logs logBuffer
	p := newProxy(route, []portMap{{host: 1, container: dead}}, 300*time.Millisecond, 0,
		slog.New(slog.NewJSONHandler(&logs, nil)))
	pln := listenLoopback(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = p.serve(ctx, pln, 0); close(done) }()
	defer func() { cancel(); <-done }()
	c := dialTCP(t, pln.Addr().String())
	expectClosed(t, c, 5*time.Second)
	line := logs.waitLog(t, 5*time.Second, "connection closed: not forwarded")
	if err, _ := line["err"].(string); !strings.Contains(err, "connection refused") || !strings.Contains(err, "held") {
		t.Errorf("log err = %q; want the dial's own error and the hold", err)
	}
	if d := dialTimeout(5 * time.Second); d >= 5*time.Second {
		t.Errorf("one dial may take %v of a 5s hold: no room for a retry", d)
	}
}

// TestProxyHeldDuringShutdown: on SIGTERM a held connection was reset at
// once and logged as held for the whole hold. Now one whose dial failed
// while a container serves keeps retrying while open connections may
// finish (the container may be restarting); one with no container to wait
// for ends at once, since the deployer has stopped; and the log says why.
func TestProxyHeldDuringShutdown(t *testing.T) {
	var logs logBuffer
	log := func(p *proxy) { p.log = slog.New(slog.NewJSONHandler(&logs, nil)) }

	ln := listenLoopback(t)
	port := uint16(ln.Addr().(*net.TCPAddr).Port)
	_ = ln.Close() // nothing listens there yet: every dial is refused
	ports := []portMap{{host: 1, container: port}}
	route := newRouter()
	route.store(newBackend("restarting", mustAddr("127.0.0.1"), ports))
	p := newProxy(route, ports, 10*time.Second, 0, slog.New(slog.DiscardHandler))
	log(p)
	pln := listenLoopback(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = p.serve(ctx, pln, 0); close(done) }()
	c := dialTCP(t, pln.Addr().String())
	waitUntil(t, 5*time.Second, "a held pair", func() bool { return p.reg.count() == 1 })
	cancel() // SIGTERM: no new connections
	<-done
	p.drain()
	back, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: int(port)})
	if err != nil {
		t.Skipf("port %d taken meanwhile: %v", port, err)
	}
	srv := &loopServer{ln: back, port: port, conns: map[*net.TCPConn]struct{}{}}
	go func() {
		s, err := back.AcceptTCP()
		if err == nil {
			echoConn(s)
			_ = s.Close()
		}
	}()
	defer srv.ln.Close()
	echoRound(t, c, "served after all")
	_ = c.Close()

	rig := startProxyRig(t, nil, 10*time.Second, 0, log)
	d := dialTCP(t, rig.addr)
	waitUntil(t, 5*time.Second, "a held pair", func() bool { return rig.p.reg.count() == 1 })
	rig.p.drain()
	expectClosed(t, d, 2*time.Second) // not the 10s hold
	line := logs.waitLog(t, 5*time.Second, "connection closed: not forwarded")
	if err, _ := line["err"].(string); !strings.Contains(err, "shutting down") {
		t.Errorf("log err = %q; want it to say the proxy is shutting down", err)
	}
}

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }

func itoa(n int) string { return strconv.Itoa(n) }

// closeAtOnce closes the connection as soon as it is accepted, reading
// nothing: net/http does this with a connection it accepts as it begins
// to shut down. The client sees FIN, or a reset if its bytes came first.
func closeAtOnce(c *net.TCPConn) {}

// TestClosedUnread tells a server that closed before the client's bytes
// reached it (they are reset, never queued) from one that half-closed or
// read them.
func TestClosedUnread(t *testing.T) {
	for _, tc := range []struct {
		name   string
		handle func(*net.TCPConn)
		want   bool
	}{
		{"closed before the bytes came", closeAtOnce, true},
		{"half-closed, still reading", func(c *net.TCPConn) { _ = c.CloseWrite(); _, _ = io.Copy(io.Discard, c) }, false},
		{"read, then closed", readLineThenClose, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := startLoopServer(t, tc.handle)
			c := dialTCP(t, srv.ln.Addr().String())
			if tc.want { // wait for the FIN before writing
				if _, err := c.Read(make([]byte, 1)); err != io.EOF {
					t.Fatalf("read: %v; want EOF", err)
				}
			}
			if _, err := io.WriteString(c, "hello\n"); err != nil {
				t.Fatal(err)
			}
			if !tc.want {
				_, _ = c.Read(make([]byte, 1)) // the FIN, after the line was read
			}
			if got := closedUnread(c, 0, time.Now().Add(unreadWait)); got != tc.want {
				t.Fatalf("closedUnread = %v; want %v", got, tc.want)
			}
		})
	}
}

// TestPairResendsWhatAClosingServerNeverRead: a server that closes a new
// connection at once, before reading, as net/http does when it begins to
// shut down, read nothing; the client's bytes go to the next container,
// once, whether its FIN or its reset came first.
func TestPairResendsWhatAClosingServerNeverRead(t *testing.T) {
	for range 20 { // both orders of the race, most likely
		closing := startLoopServer(t, closeAtOnce)
		good := startLoopServer(t, taggedEcho("good"))
		rig := startProxyRig(t, nil, 2*time.Second, 0)
		c := dialTCP(t, rig.addr)
		_, _ = io.WriteString(c, "hello\n") // queued while the connection is held
		waitUntil(t, 5*time.Second, "a held pair", func() bool { return rig.p.reg.count() == 1 })
		rig.route.store(closing.backend("closing"))
		closing.waitAccepted(t)
		rig.route.store(good.backend("good"))
		b := make([]byte, 64)
		n, err := io.ReadAtLeast(c, b, len("good hello\n"))
		if err != nil || string(b[:n]) != "good hello\n" {
			t.Fatalf("got %q, %v; want %q", b[:n], err, "good hello\n")
		}
		_ = c.Close()
	}
}
