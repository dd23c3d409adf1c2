package main

// More attacks on the copy loop's message path, made on commit 4542d4d
// (since reverted); these held up there and hold now. Real sockets on
// 127.0.0.1; every wait is bounded.

import (
	"crypto/sha256"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"
)

// TestAttack13UrgentWithInq: urgent bytes after a conversation (with
// commit 4542d4d, once TCP_INQ was on), at every
// place: alone, in a burst, the last byte before a FIN, twice in a row.
// The bytes around them arrive, nothing stalls, the pair closes.
func TestAttack13UrgentWithInq(t *testing.T) {
	for _, tc := range []struct {
		name  string
		steps func(t *testing.T, c *net.TCPConn) string // returns what the echo must be
	}{
		{"alone, then more", func(t *testing.T, c *net.TCPConn) string {
			sendUrgent(t, c, '!')
			expectSilent(t, c, 50*time.Millisecond)
			_, _ = io.WriteString(c, "def")
			return "def"
		}},
		{"after data, then more", func(t *testing.T, c *net.TCPConn) string {
			_, _ = io.WriteString(c, "abc")
			sendUrgent(t, c, '!')
			_, _ = io.WriteString(c, "def")
			return "abcdef"
		}},
		{"last before FIN", func(t *testing.T, c *net.TCPConn) string {
			_, _ = io.WriteString(c, "abc")
			sendUrgent(t, c, '!')
			return "abc"
		}},
		{"two in a row", func(t *testing.T, c *net.TCPConn) string {
			_, _ = io.WriteString(c, "abc")
			sendUrgent(t, c, '!')
			sendUrgent(t, c, '?')
			_, _ = io.WriteString(c, "def")
			return "abc!def" // a new urgent mark puts the old byte in line (TCP has one)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := startLoopServer(t, echoConn)
			rig := startProxyRig(t, srv.backend("a"), 0, 0)
			c := dialTCP(t, rig.addr)
			for range 5 {
				echoRound(t, c, "ping")
			}
			want := tc.steps(t, c)
			_ = c.CloseWrite()
			got, err := readToEnd(c, 5*time.Second)
			if err != nil || string(got) != want {
				t.Fatalf("got %q, %v; want %q then EOF", got, err, want)
			}
			waitUntil(t, 5*time.Second, "the pair closed", func() bool { return rig.p.reg.count() == 0 })
		})
	}
}

// TestAttack13ShutdownWhileStreaming: shutdown while a client streams
// small writes without a pause (the up copier is always reading or
// writing) and a server streams back, and while a server stops reading
// (the up copier blocks in a write): shutdown returns at once and both
// ends close.
func TestAttack13ShutdownWhileStreaming(t *testing.T) {
	for _, stall := range []bool{false, true} {
		name := map[bool]string{false: "server reads", true: "server stopped reading"}[stall]
		t.Run(name, func(t *testing.T) {
			release := make(chan struct{})
			srv := startLoopServer(t, func(c *net.TCPConn) {
				if _, err := io.ReadFull(c, make([]byte, 4)); err != nil {
					return
				}
				_, _ = io.WriteString(c, "pong")
				if stall {
					<-release
					return
				}
				go func() { // stream back too
					b := make([]byte, 100)
					for {
						if _, err := c.Write(b); err != nil {
							return
						}
					}
				}()
				_, _ = io.Copy(io.Discard, struct{ io.Reader }{c})
			})
			defer close(release)
			rig := startProxyRig(t, srv.backend("a"), 0, 0)
			c := dialTCP(t, rig.addr)
			echoRoundWant(t, c, "ping", "pong")
			var wrote atomic.Int64
			stop := make(chan error, 1)
			go func() {
				b := make([]byte, 37)
				for {
					n, err := c.Write(b)
					wrote.Add(int64(n))
					if err != nil {
						stop <- err
						return
					}
				}
			}()
			go func() { _, _ = io.Copy(io.Discard, struct{ io.Reader }{c}) }()
			waitUntil(t, 5*time.Second, "the client streaming", func() bool { return wrote.Load() > 1<<20 || (stall && wrote.Load() > 1<<16) })
			done := make(chan int, 1)
			go func() { done <- rig.p.shutdown() }()
			select {
			case n := <-done:
				if n != 1 {
					t.Errorf("shutdown closed %d pairs; want 1", n)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("shutdown still running after 5s")
			}
			select {
			case <-stop:
			case <-time.After(5 * time.Second):
				t.Fatal("the client still writes 5s after shutdown")
			}
			waitUntil(t, 5*time.Second, "the pair closed", func() bool { return rig.p.reg.count() == 0 })
		})
	}
}

// TestAttack13BytesCountedOnce: across partial writes and waits for room
// (a server that reads slowly in small reads), the bytes metric counts
// each byte once: it ends equal to what the server read, which is what
// the client sent.
func TestAttack13BytesCountedOnce(t *testing.T) {
	const total = 4 << 20
	sum := make(chan [32]byte, 1)
	srv := startLoopServer(t, func(c *net.TCPConn) {
		if _, err := io.ReadFull(c, make([]byte, 4)); err != nil {
			return
		}
		_, _ = io.WriteString(c, "pong")
		_ = c.SetReadBuffer(64 << 10) // small reads, and partial writes at the proxy
		h := sha256.New()
		_, _ = io.CopyBuffer(h, struct{ io.Reader }{c}, make([]byte, 700))
		var s [32]byte
		h.Sum(s[:0])
		sum <- s
		_, _ = io.WriteString(c, "done")
	})
	rig := startProxyRig(t, srv.backend("a"), 0, 0)
	c := dialTCP(t, rig.addr)
	_ = c.SetDeadline(time.Now().Add(60 * time.Second))
	echoRoundWant(t, c, "ping", "pong")
	data := make([]byte, total)
	for i := range data {
		data[i] = byte(i * 13 / 7)
	}
	for rest, i := data, 0; len(rest) > 0; i++ {
		n := min(len(rest), 1+(i*7919)%3000)
		if _, err := c.Write(rest[:n]); err != nil {
			t.Fatal(err)
		}
		rest = rest[n:]
	}
	_ = c.CloseWrite()
	select {
	case s := <-sum:
		if s != sha256.Sum256(data) {
			t.Fatal("the server read other bytes than the client sent")
		}
	case <-time.After(60 * time.Second):
		t.Fatal("no EOF at the server within a minute")
	}
	got, err := readToEnd(c, 5*time.Second)
	if string(got) != "done" || err != nil {
		t.Fatalf("got %q, %v", got, err)
	}
	waitUntil(t, 5*time.Second, "the pair closed", func() bool { return rig.p.reg.count() == 0 })
	if up := counterValue(t, rig.p.m.bytesUp[0]); up != 4+total {
		t.Errorf("bytes up %v; want %d", up, 4+total)
	}
	if down := counterValue(t, rig.p.m.bytesDown[0]); down != 8 {
		t.Errorf("bytes down %v; want 8", down)
	}
}

// TestAttack13WriteErrorEndsPair: a server that, mid-conversation, closes
// with a FIN and stops reading: the proxy's next writes to it fail
// (EPIPE or ECONNRESET from the non-blocking write); the pair ends, and
// the client sees its connection close.
func TestAttack13WriteErrorEndsPair(t *testing.T) {
	srv := startLoopServer(t, func(c *net.TCPConn) {
		b := make([]byte, 4)
		for range 5 {
			if _, err := io.ReadFull(c, b); err != nil {
				return
			}
			_, _ = io.WriteString(c, "pong")
		}
	})
	rig := startProxyRig(t, srv.backend("a"), 0, 0)
	c := dialTCP(t, rig.addr)
	for range 5 {
		echoRoundWant(t, c, "ping", "pong")
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := io.WriteString(c, "more"); err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the client can still write 5s after the server closed (%d pairs)", rig.p.reg.count())
		}
		if rig.p.reg.count() == 0 {
			break
		}
	}
	waitUntil(t, 5*time.Second, "the pair closed", func() bool { return rig.p.reg.count() == 0 })
}
