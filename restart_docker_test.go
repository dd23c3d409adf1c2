package main

// Restarts of the proxy itself without a gap (see handover.go), against
// proxy binaries and the real daemon.

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// restartLoad is load for restarts: workers that make a new connection per
// request, and streams: keep-alive connections of streamRequests requests
// each, short enough to finish inside -shutdown_timeout.
type restartLoad struct {
	ok, failed, streams atomic.Int64
	mu                  sync.Mutex
	errs                []error
	stopc               chan struct{}
	wg                  sync.WaitGroup
}

const (
	streamRequests = 20 // of 50ms each: a stream lasts about a second
	restartLoadMax = 3 * time.Minute
)

func startRestartLoad(t testing.TB, addr string, short, streams int) *restartLoad {
	l := &restartLoad{stopc: make(chan struct{})}
	deadline := time.Now().Add(restartLoadMax)
	fail := func(err error) {
		l.failed.Add(1)
		l.mu.Lock()
		if len(l.errs) < 5 {
			l.errs = append(l.errs, err)
		}
		l.mu.Unlock()
	}
	running := func() bool {
		select {
		case <-l.stopc:
			return false
		default:
			return time.Now().Before(deadline)
		}
	}
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil}}
	for range short {
		l.wg.Go(func() {
			for running() {
				if err := getOK(client, "http://"+addr+"/"); err != nil {
					fail(err)
					continue
				}
				l.ok.Add(1)
			}
		})
	}
	for range streams {
		l.wg.Go(func() {
			for running() {
				if err := stream(addr); err != nil {
					fail(err)
					continue
				}
				l.streams.Add(1)
			}
		})
	}
	t.Cleanup(l.stop)
	return l
}

// stream sends streamRequests requests on one connection, each after the
// answer to the last, and checks every answer.
func stream(addr string) error {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	br := bufio.NewReader(c)
	for i := range streamRequests {
		if _, err := fmt.Fprintf(c, "GET /slow?ms=50 HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
			return fmt.Errorf("stream request %d: %w", i, err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return fmt.Errorf("stream answer %d: %w", i, err)
		}
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK {
			return fmt.Errorf("stream answer %d: %s %v", i, resp.Status, err)
		}
	}
	return nil
}

func (l *restartLoad) stop() {
	select {
	case <-l.stopc:
	default:
		close(l.stopc)
	}
	l.wg.Wait()
}

// TestDockerRestartsUnderLoad: five restarts of the proxy, each a new
// process taking over from the running one, under load: no connection
// attempt fails, nothing is reset, every stream completes, and each old
// process exits 0 once its connections are done.
func TestDockerRestartsUnderLoad(t *testing.T) {
	tag := newTag(t, "v1")
	c := startCtr(t, tag)
	p := startCtlProxy(t, tag, "-shutdown_timeout", "10s")
	waitServed(t, p.addr, c, 10*time.Second)

	l := startRestartLoad(t, p.addr, 16, 4)
	eventually(t, 10*time.Second, "load flowing", func() bool { return l.ok.Load() > 50 && l.streams.Load() > 0 })
	for i := range 5 {
		before := l.ok.Load()
		n := p.successor(t)
		p.logs.waitLog(t, 10*time.Second, "handed over to a new process: no new connections here; open ones may finish")
		select {
		case <-p.exited:
			if p.err != nil {
				t.Fatalf("restart %d: the old process exited: %v", i+1, p.err)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("restart %d: the old process did not exit", i+1)
		}
		eventually(t, 10*time.Second, "requests through the new process", func() bool { return l.ok.Load() > before+50 })
		if s := n.status(t); s.Serving == nil || s.Serving.ID != c.id {
			t.Fatalf("restart %d: the new process serves %+v; want %s", i+1, s.Serving, c.short())
		}
		p = n
	}
	l.stop()
	t.Logf("%d requests, %d streams of %d requests, %d failed, across 5 restarts", l.ok.Load(), l.streams.Load(), streamRequests, l.failed.Load())
	if l.failed.Load() > 0 {
		t.Errorf("%d requests or streams failed; first errors: %v", l.failed.Load(), l.errs)
	}
	if !strings.Contains(p.logs.String(), "took over from the running proxy") {
		t.Error("the last process did not take over")
	}
	// The last one to stop removes the control socket it was handed.
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(20 * time.Second):
		t.Fatal("the last process did not stop on SIGTERM")
	}
	if _, err := os.Lstat(p.control); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the control socket %s is still there after the last proxy stopped: %v", p.control, err)
	}
}
