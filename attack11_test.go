package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
)

// TestAttackWaiterProxyRestartedMidDeploy: the proxy restarts while the
// old container drains. The new proxy checks every container again (both
// pending, the old one not yet retired): wait must not call that done.
func TestAttackWaiterProxyRestartedMidDeploy(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	old := ctrStatus{ID: "old", Container: "old", Created: t0}
	me := ctrStatus{ID: "me", Container: "me", Created: t0.Add(time.Minute)}
	w := &waiter{target: controlContainer{ID: me.ID, Created: me.Created}}
	if done, err := w.status(&status{Serving: &me, Draining: []ctrStatus{old}, Events: "connected"}); done || err != nil {
		t.Fatalf("serving, old one draining: done %v, err %v", done, err)
	}
	w.reconnected() // the proxy restarted
	s := &status{Pending: []ctrStatus{me, old}, Events: "connected"}
	if done, err := w.status(s); done || err != nil {
		t.Fatalf("after a restart, both checked again, the old one still there: done %v, err %v; want not done yet", done, err)
	}
}

// inspectRecorder is a Docker API that records the refs inspected and
// knows no container.
type inspectRecorder struct {
	dockerAPI
	mu   sync.Mutex
	refs []string
}

func (d *inspectRecorder) ContainerInspect(_ context.Context, id string) (container.InspectResponse, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.refs = append(d.refs, id)
	return container.InspectResponse{}, cerrdefs.ErrNotFound
}

// serveTestControl serves the control API for d on a socket in a temporary
// folder, until the test ends.
func serveTestControl(t *testing.T, d dockerAPI) *ctlClient {
	t.Helper()
	path := filepath.Join(t.TempDir(), "c.sock")
	ln, err := listenControl(path)
	if err != nil {
		t.Fatal(err)
	}
	sel, err := newSelector("app:latest", nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	rn := newRunner(newRule(ruleConfig{statusTimeout: time.Second}, slog.New(slog.DiscardHandler), newMetrics(nil)), newRouter(), nil, nil, nil, slog.New(slog.DiscardHandler))
	ctl := &control{rn: rn, connected: new(atomic.Bool), docker: d, sel: sel, log: slog.New(slog.DiscardHandler)}
	done := make(chan struct{})
	go func() { defer close(done); _ = ctl.serve(ctx, ln) }()
	t.Cleanup(func() { cancel(); <-done })
	return newCtlClient(path)
}

// TestAttackContainerRefTraversal: a ref is one container's id or name.
// One with a slash or a dot segment must not reach Docker, whose client
// joins it into the API path (../images/x inspects an image, . lists
// containers), and must be "no such container" (exit 2).
func TestAttackContainerRefTraversal(t *testing.T) {
	d := &inspectRecorder{}
	c := serveTestControl(t, d)
	for _, ref := range []string{"../images/app:latest", "..", ".", "a/../../_ping", "x/y"} {
		_, err := c.container(context.Background(), ref)
		if exitCode(err) != exitUsage {
			t.Errorf("%q: %v (exit %d); want exit %d", ref, err, exitCode(err), exitUsage)
		}
	}
	for _, ref := range []string{"abc123", "my-app.1_x"} {
		if _, err := c.container(context.Background(), ref); exitCode(err) != exitUsage || !strings.Contains(err.Error(), "no such container") {
			t.Errorf("%q: %v; want no such container", ref, err)
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, r := range d.refs {
		if strings.Contains(r, "/") || strings.Trim(r, ".") == "" {
			t.Errorf("Docker was asked to inspect %q", r)
		}
	}
	if len(d.refs) != 2 {
		t.Errorf("inspected %q; want the 2 valid refs", d.refs)
	}
}

// TestAttackWaitTimeoutBoundsAHungProxy: a proxy that accepts but never
// answers (stopped with SIGSTOP, or wedged): wait -timeout 1s must end in
// about a second with "could not tell", not after its own 30s bounds.
func TestAttackWaitTimeoutBoundsAHungProxy(t *testing.T) {
	path := filepath.Join(t.TempDir(), "hung.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var mu sync.Mutex
	var conns []net.Conn
	defer func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			_ = c.Close()
		}
	}()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c) // read nothing, answer nothing
			mu.Unlock()
		}
	}()
	start := time.Now()
	var out, errOut strings.Builder
	code := waitMain([]string{"-control", path, "-timeout", "1s", "abc"}, &out, &errOut)
	if took := time.Since(start); code != exitUnknown || took > 5*time.Second {
		t.Errorf("wait -timeout 1s on a hung proxy: exit %d after %s (%s); want exit %d within a few seconds", code, took.Round(time.Millisecond), strings.TrimSpace(errOut.String()), exitUnknown)
	}
}

// TestAttackWaitReconnectThroughARestart: the proxy restarts while wait
// waits. A connection the dying proxy accepted and then dropped (EOF, a
// reset) is not "not a docker-proxy" (exit 2): wait tries again until the
// new proxy answers.
func TestAttackWaitReconnectThroughARestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "p.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	t0 := time.Now().Add(-time.Minute)
	me := ctrStatus{ID: "me", Container: "me", Created: t0}
	line := func(s status) string {
		s.API, s.Selector, s.Events, s.Settings = controlAPI, "app:latest", "connected", settings{StatusTimeout: "10s", GracePeriod: "10s"}
		b, _ := json.Marshal(controlLine{Status: &s})
		return string(b) + "\n"
	}
	var mu sync.Mutex
	streams := 0
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/containers/{ref}", func(w http.ResponseWriter, r *http.Request) {
		_ = json.NewEncoder(w).Encode(controlContainer{ID: "me", Name: "me", Created: t0, State: "running", Selected: true})
	})
	mux.HandleFunc("GET /v1/events", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		streams++
		n := streams
		mu.Unlock()
		switch n {
		case 1: // the first proxy: checking, then it dies
			_, _ = io.WriteString(w, line(status{Pending: []ctrStatus{me}}))
		case 2, 3: // dying: accepted, then dropped
			hj, _ := w.(http.Hijacker)
			if c, _, err := hj.Hijack(); err == nil {
				_ = c.Close()
			}
		default: // the new proxy: it serves
			_, _ = io.WriteString(w, line(status{Serving: &me}))
			_ = http.NewResponseController(w).Flush()
			<-r.Context().Done()
		}
	})
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set(controlHeader, "1")
		mux.ServeHTTP(w, r)
	})}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()
	var out, errOut strings.Builder
	if code := waitMain([]string{"-control", path, "-timeout", "20s", "me"}, &out, &errOut); code != exitOK {
		t.Errorf("exit %d: %s; want 0 once the restarted proxy answers", code, strings.TrimSpace(errOut.String()))
	}
}

// TestAttackIdleClientsLockOutTheControlAPI: clients that keep their
// connection open after an answer (an HTTP client's keep-alive pool) take
// one of the controlMaxConns slots each. They must not lock wait and
// status out for good: an idle connection is closed after a while.
func TestAttackIdleClientsLockOutTheControlAPI(t *testing.T) {
	c := serveTestControl(t, &inspectRecorder{})
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			_ = c.Close()
		}
	}()
	for range controlMaxConns {
		conn, err := net.Dial("unix", c.path)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, conn)
		if _, err := io.WriteString(conn, "GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close() // and the connection stays open, idle
	}
	var out, errOut strings.Builder
	if code := statusMain([]string{"-control", c.path, "-json"}, &out, &errOut); code != exitOK {
		t.Errorf("status with %d idle clients: exit %d: %s", controlMaxConns, code, strings.TrimSpace(errOut.String()))
	}
}
