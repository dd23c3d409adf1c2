package main

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"runtime"
	"testing"
	"time"
)

// TestAttack13hHandlersEndWithServe: kept handlers waited on p.idle until
// p.life ended, and life ends only in p.shutdown, which serve (serve.go)
// calls only when -shutdown_timeout runs out or on a second signal. A
// proxy that stops accepting and whose connections all finish in time
// (the usual SIGTERM, and the old process after a hand-over) never calls
// it: up to maxIdleHandlers goroutines, and the proxy they reference, were
// kept waiting for a connection no loop would ever send. A handler must
// stop waiting once the loop that gave it its connection has stopped.
func TestAttack13hHandlersEndWithServe(t *testing.T) {
	rig := startProxyRig(t, nil, 30*time.Second, 0)
	t.Cleanup(func() { // frees what the test leaves, pass or fail
		rig.p.shutdown()
		waitUntil(t, 5*time.Second, "no handler after shutdown", func() bool { return rig.p.idlers.Load() == 0 })
	})
	keepHandlers(t, rig, 2*maxIdleHandlers)

	// The proxy stops accepting; every connection is already closed, so
	// serve.go would never call p.shutdown.
	rig.stop()
	waitUntil(t, 5*time.Second, "no handler waiting once the proxy stopped accepting, with no connection open (p.life never ends without p.shutdown)",
		func() bool { return rig.p.idlers.Load() == 0 })
}

// handlerGoroutines counts goroutines in (*proxy).handler.
func handlerGoroutines() int {
	buf := make([]byte, 4<<20)
	buf = buf[:runtime.Stack(buf, true)]
	return bytes.Count(buf, []byte(".(*proxy).handler("))
}

// TestAttack13hServeLeavesNoHandler: the same through serve itself (the
// path of a SIGTERM and of the old process after a hand-over): the
// connections finish before -shutdown_timeout, serve returns, and kept
// handlers of its proxy were still there, for good.
func TestAttack13hServeLeavesNoHandler(t *testing.T) {
	before := handlerGoroutines() // earlier tests' proxies may have left some
	cfg := testConfig("myapp", portMap{host: 18080, container: 80})
	ln := listenLoopback(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- serve(ctx, nil, cfg, newSimDocker(0), []*net.TCPListener{ln}, slog.New(slog.DiscardHandler))
	}()
	// No container and no -hold_timeout: each connection is closed at
	// once, and its handler then waits for the next one.
	for range 3 {
		c := dialTCP(t, ln.Addr().String())
		if _, err := io.ReadAll(c); err != nil {
			t.Fatalf("read: %v", err)
		}
		_ = c.Close()
	}
	waitUntil(t, 5*time.Second, "a handler waiting", func() bool { return handlerGoroutines() > before })
	cancel()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("serve did not return")
	}
	waitUntil(t, 5*time.Second, "no handler of serve's proxy left after serve returned", func() bool { return handlerGoroutines() <= before })
}
