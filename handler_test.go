package main

import (
	"net"
	"testing"
	"time"
)

// TestProxyReusesHandlers: connections one after another are handled by
// a kept handler (whose stack grew once), not by a new goroutine each:
// without reuse, each would leave one more handler waiting, up to the cap.
// (A connection that comes between a handler's count and its wait gets a
// new one: so up to 2.)
func TestProxyReusesHandlers(t *testing.T) {
	srv := startLoopServer(t, echoConn)
	rig := startProxyRig(t, srv.backend("a"), 0, 0)
	for range 4 * maxIdleHandlers {
		c := dialTCP(t, rig.addr)
		echoRound(t, c, "hi")
		_ = c.Close()
		waitUntil(t, 5*time.Second, "the pair closed", func() bool { return rig.p.reg.count() == 0 })
		waitUntil(t, 5*time.Second, "a handler waiting again", func() bool { return rig.p.idlers.Load() >= 1 })
	}
	if n := rig.p.idlers.Load(); n > 2 {
		t.Fatalf("%d handlers waiting after one connection at a time; want 1 (2 at most)", n)
	}
}

// TestProxyIdleHandlersBounded: after a burst of held connections, at most
// maxIdleHandlers handlers stay to wait for more, and shutdown ends them.
func TestProxyIdleHandlersBounded(t *testing.T) {
	rig := startProxyRig(t, nil, 30*time.Second, 0)
	keepHandlers(t, rig, 3*maxIdleHandlers)
	rig.p.shutdown()
	waitUntil(t, 5*time.Second, "no handler waiting after shutdown", func() bool { return rig.p.idlers.Load() == 0 })
}

// keepHandlers holds burst connections on rig (which has no backend),
// then gives them a backend, answers and closes each, and waits until the
// most handlers it may keep wait for more.
func keepHandlers(t *testing.T, rig *proxyRig, burst int) {
	t.Helper()
	srv := startLoopServer(t, echoConn)
	var clients []*net.TCPConn
	for range burst {
		clients = append(clients, dialTCP(t, rig.addr))
	}
	waitUntil(t, 5*time.Second, "every connection held", func() bool { return rig.p.reg.count() == burst })
	rig.route.store(srv.backend("a"))
	for _, c := range clients {
		echoRound(t, c, "hi")
		_ = c.Close()
	}
	waitUntil(t, 5*time.Second, "every pair closed", func() bool { return rig.p.reg.count() == 0 })
	waitUntil(t, 5*time.Second, "handlers waiting", func() bool { return rig.p.idlers.Load() == maxIdleHandlers })
}
