package main

import (
	"net"
	"testing"

	"golang.org/x/sys/unix"
)

// inqOn tells whether c has TCP_INQ on.
func inqOn(t *testing.T, c *net.TCPConn) bool {
	t.Helper()
	raw, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var v int
	var serr error
	if err := raw.Control(func(fd uintptr) { v, serr = unix.GetsockoptInt(int(fd), unix.SOL_TCP, unix.TCP_INQ) }); err != nil || serr != nil {
		t.Fatalf("getsockopt TCP_INQ: %v %v", err, serr)
	}
	return v != 0
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

// TestCopierInqOnlyForConversations: a connection with one exchange costs
// no TCP_INQ setsockopt; one that goes on has it on both of the proxy's
// sockets, so that each message saves the read that says EAGAIN.
func TestCopierInqOnlyForConversations(t *testing.T) {
	srv := startLoopServer(t, echoConn)
	rig := startProxyRig(t, srv.backend("a"), 0, 0)
	c := dialTCP(t, rig.addr)
	echoRound(t, c, "one")
	client, server := onlyPair(t, rig)
	if inqOn(t, client) || inqOn(t, server) {
		t.Errorf("after one exchange TCP_INQ is on (client %v, server %v); want off", inqOn(t, client), inqOn(t, server))
	}
	for range 3 {
		echoRound(t, c, "more")
	}
	waitUntil(t, 5e9, "TCP_INQ on both sockets", func() bool { return inqOn(t, client) && inqOn(t, server) })
}
