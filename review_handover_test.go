package main

import (
	"context"
	"log/slog"
	"net"
	"path/filepath"
	"testing"
	"time"
)

// TestHandoverStopDuringExchange: an old process told to stop (SIGTERM)
// after it sent its listeners, before the successor's ack, stops
// accepting. If it returns (and so exits) before it confirms the ack, the
// successor, unconfirmed, stops too: nobody accepts. serve must not
// return while a hand-over whose state it sent waits for the ack.
func TestHandoverStopDuringExchange(t *testing.T) {
	cfg := testConfig("myapp", portMap{host: 18080, container: 80})
	cfg.address = "127.0.0.1"
	cfg.control = filepath.Join(t.TempDir(), "ctl.sock")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- serve(ctx, nil, cfg, newSimDocker(0), []*net.TCPListener{listenLoopback(t)}, slog.New(slog.DiscardHandler))
	}()
	eventually(t, 5*time.Second, "the control socket up", func() bool {
		c, err := net.Dial("unix", cfg.control)
		if err == nil {
			_ = c.Close()
		}
		return err == nil
	})
	tk, err := takeOver(cfg.control, cfg)
	if err != nil {
		t.Fatalf("takeOver: %v", err)
	}
	defer tk.socks.close()
	cancel() // SIGTERM to the old process, before the ack
	select {
	case <-done:
		t.Fatal("the old process returned (would exit) before it confirmed the successor's ack: both stop")
	case <-time.After(time.Second):
	}
	if err := tk.accepting(); err != nil {
		t.Errorf("accepting: %v", err)
	}
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("the old process did not return")
	}
}
