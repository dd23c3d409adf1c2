package main

// Tests of the copy loop's small-message path (a pooled buffer, one read
// and one write) and its hand-off to splice: messages of every size, a
// reader that stalls, shutdown between messages. Real sockets on
// 127.0.0.1, no Docker.

import (
	"bytes"
	"crypto/sha256"
	"io"
	"math/rand/v2"
	"net"
	"testing"
	"time"
)

// TestCopierMessagesOfEverySize: a conversation of messages from 1 byte
// to past the pooled buffer, each answered before the next, comes back
// whole; then bytes and the client's FIN sent together still reach the
// server, and the pair closes.
func TestCopierMessagesOfEverySize(t *testing.T) {
	srv := startLoopServer(t, echoConn)
	rig := startProxyRig(t, srv.backend("a"), 0, 0)
	c := dialTCP(t, rig.addr)
	rnd := rand.New(rand.NewPCG(1, 2))
	sizes := []int{1, 2, spliceMin - 1, spliceMin, bufSize - 1, bufSize, bufSize + 1, 3 * bufSize}
	for range 200 {
		sizes = append(sizes, 1+rnd.IntN(2*bufSize))
	}
	for i, n := range sizes {
		msg := bytes.Repeat([]byte{byte('a' + i%26)}, n)
		echoRound(t, c, string(msg))
	}
	if _, err := io.WriteString(c, "last words"); err != nil {
		t.Fatal(err)
	}
	_ = c.CloseWrite()
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "last words" {
		t.Fatalf("after the last message got %q, %v; want %q then EOF", got, err, "last words")
	}
	waitUntil(t, 5*time.Second, "the pair closed", func() bool { return rig.p.reg.count() == 0 })
}

// TestCopierStalledReader: a server that stops reading makes the proxy's
// writes find no room part way through a message, which then waits for
// room; every byte still arrives once, in order, when it reads again.
func TestCopierStalledReader(t *testing.T) {
	const total = 32 << 20         // more than the buffers on the way can hold
	stalled := make(chan struct{}) // closed once the client's writes stall, or end
	sum := make(chan [32]byte, 1)
	srv := startLoopServer(t, func(c *net.TCPConn) {
		<-stalled
		h := sha256.New()
		_, _ = io.CopyBuffer(h, struct{ io.Reader }{c}, make([]byte, 512))
		var s [32]byte
		h.Sum(s[:0])
		sum <- s
		_ = c.Close()
	})
	rig := startProxyRig(t, srv.backend("a"), 0, 0)
	c := dialTCP(t, rig.addr)
	data := make([]byte, total)
	for i := range data {
		data[i] = byte(i * 7 / 3)
	}
	// Messages of up to 3000 bytes, one write each: the proxy reads them
	// one by one, on the message path, until the server's socket is full.
	rnd := rand.New(rand.NewPCG(3, 4))
	for rest := data; len(rest) > 0; {
		_ = c.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
		n, err := c.Write(rest[:min(len(rest), 1+rnd.IntN(3000))])
		rest = rest[n:]
		switch {
		case isTimeoutErr(err):
			closeOnce(stalled) // every buffer on the way is full
		case err != nil:
			t.Fatalf("write: %v", err)
		}
	}
	closeOnce(stalled)
	_ = c.CloseWrite()
	select {
	case s := <-sum:
		if s != sha256.Sum256(data) {
			t.Fatal("the server received other bytes than the client sent")
		}
	case <-time.After(time.Minute):
		t.Fatal("the server did not get the client's EOF within a minute")
	}
}

func closeOnce(ch chan struct{}) {
	select {
	case <-ch:
	default:
		close(ch)
	}
}

// TestCopierShutdownBetweenMessages: pairs whose copy loops wait between
// messages, after several exchanges, close at shutdown, as idle ones
// always did.
func TestCopierShutdownBetweenMessages(t *testing.T) {
	srv := startLoopServer(t, echoConn)
	rig := startProxyRig(t, srv.backend("a"), 0, 0)
	var clients []*net.TCPConn
	for range 4 {
		c := dialTCP(t, rig.addr)
		for range 5 {
			echoRound(t, c, "ping")
		}
		clients = append(clients, c)
	}
	if n := rig.p.shutdown(); n != len(clients) {
		t.Errorf("shutdown closed %d pairs; want %d", n, len(clients))
	}
	for _, c := range clients {
		expectClosed(t, c, 5*time.Second)
	}
	waitUntil(t, 5*time.Second, "every pair closed", func() bool { return rig.p.reg.count() == 0 })
}
