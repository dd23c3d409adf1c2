package main

// Zero downtime, proven: real load through real containers while deploys,
// crashes and stops happen. Every load loop is bounded in count and time.

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
)

// load keeps requests going through the proxy: short ones, each on a new
// connection, and long keep-alive streams.
type load struct {
	ok, failed atomic.Int64
	mu         sync.Mutex
	errs       []error // the first few failures
	stopc      chan struct{}
	stopOnce   sync.Once
	wg         sync.WaitGroup
}

const (
	loadMaxRequests = 2_000_000
	loadMaxTime     = 10 * time.Minute
)

// startLoad starts short workers sending GET / on a new connection each,
// and streams sending GET /slow?ms=50 on one keep-alive connection each.
// It stops by itself after loadMaxRequests or loadMaxTime at the latest.
func startLoad(t testing.TB, addr string, short, streams int) *load {
	t.Helper()
	l := &load{stopc: make(chan struct{})}
	deadline := time.Now().Add(loadMaxTime)
	run := func(client *http.Client, path string) {
		defer l.wg.Done()
		for time.Now().Before(deadline) && l.ok.Load()+l.failed.Load() < loadMaxRequests {
			select {
			case <-l.stopc:
				return
			default:
			}
			if err := getOK(client, "http://"+addr+path); err != nil {
				l.failed.Add(1)
				l.mu.Lock()
				if len(l.errs) < 5 {
					l.errs = append(l.errs, err)
				}
				l.mu.Unlock()
				continue
			}
			l.ok.Add(1)
		}
	}
	for range short {
		l.wg.Add(1)
		go run(&http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil}}, "/")
	}
	for range streams {
		l.wg.Add(1)
		go run(&http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 1}}, "/slow?ms=50")
	}
	t.Cleanup(func() { l.stop() })
	return l
}

func getOK(c *http.Client, url string) error {
	resp, err := c.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20)); err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return nil
}

// stop ends the load and returns the counts.
func (l *load) stop() (ok, failed int64, errs []error) {
	l.stopOnce.Do(func() { close(l.stopc) })
	l.wg.Wait()
	return l.counts()
}

// counts reads the counts so far.
func (l *load) counts() (ok, failed int64, errs []error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.ok.Load(), l.failed.Load(), append([]error(nil), l.errs...)
}

// expectNoFailure stops the load and fails the test on any failed request.
func (l *load) expectNoFailure(t testing.TB) int64 {
	t.Helper()
	ok, failed, errs := l.stop()
	if ok == 0 {
		t.Fatal("no request succeeded: the load proves nothing")
	}
	if failed > 0 {
		t.Fatalf("%d of %d requests failed; first: %v", failed, ok+failed, errs)
	}
	return ok
}

// runningOfTag lists the test's running containers of tag.
func runningOfTag(t testing.TB, tag string) []string {
	t.Helper()
	list, err := dockerCli.ContainerList(context.Background(), container.ListOptions{
		Filters: filters.NewArgs(filters.Arg("label", testLabel+"="+runID)),
	})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, c := range list {
		if c.Image == tag {
			ids = append(ids, c.ID)
		}
	}
	return ids
}

// zeroDowntimeConfig is what a production user runs, with short timings.
func zeroDowntimeConfig(tag string) config {
	cfg := testConfig(tag, portMap{80, 80})
	cfg.statusURL = statusURL{port: 80, uri: "/status"}
	cfg.hold = 5 * time.Second
	return cfg
}

// TestDockerSoak deploys again and again under load: zero failed requests,
// and after each deploy exactly one container of the tag. make test runs 3
// deploys in each mode; make soak runs SOAK_DEPLOYS (20).
func TestDockerSoak(t *testing.T) {
	deploys := 3
	if s := os.Getenv("SOAK_DEPLOYS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("SOAK_DEPLOYS=%q: want a count", s)
		}
		deploys = n
	}
	for _, drain := range []bool{false, true} {
		t.Run(fmt.Sprintf("drain=%v", drain), func(t *testing.T) {
			tag := newTag(t, "v1")
			cur := startCtr(t, tag)
			cfg := zeroDowntimeConfig(tag)
			cfg.drain = drain
			p := startProxy(t, cfg)
			waitServed(t, p.addrs[0], cur, 10*time.Second)
			l := startLoad(t, p.addrs[0], 16, 3)
			for i := range deploys {
				nu := startCtr(t, tag, "-ready_after", "500ms")
				waitServed(t, p.addrs[0], nu, 15*time.Second)
				eventually(t, 15*time.Second, "old container removed", func() bool { return !ctrExists(t, cur.id) })
				if ids := runningOfTag(t, tag); len(ids) != 1 || ids[0] != nu.id {
					t.Fatalf("deploy %d: running containers of the tag %v; want only %s", i+1, ids, nu.short())
				}
				if _, failed, errs := l.counts(); failed > 0 {
					t.Fatalf("deploy %d: %d requests failed; first: %v", i+1, failed, errs)
				}
				cur = nu
			}
			ok := l.expectNoFailure(t)
			t.Logf("drain=%v: %d deploys, %d requests, 0 failed", drain, deploys, ok)
		})
	}
}

// TestDockerStopThenStartIsHeld: with no ready container (a stop-then-start
// deploy), new connections wait for the next one instead of failing.
func TestDockerStopThenStartIsHeld(t *testing.T) {
	tag := newTag(t, "v1")
	old := startCtr(t, tag)
	p := startProxy(t, zeroDowntimeConfig(tag))
	waitServed(t, p.addrs[0], old, 10*time.Second)
	l := startLoad(t, p.addrs[0], 8, 0)
	eventually(t, 5*time.Second, "load flowing", func() bool { return l.ok.Load() > 50 })

	if err := dockerCli.ContainerStop(context.Background(), old.id, container.StopOptions{}); err != nil {
		t.Fatal(err)
	}
	p.logs.waitLog(t, 10*time.Second, "no ready container: new connections wait for one")
	nu := startCtr(t, tag, "-ready_after", "1s")
	waitServed(t, p.addrs[0], nu, 15*time.Second)
	l.expectNoFailure(t)
}

// TestDockerHeldBeforeFirstContainer: a connection that arrives before any
// container of the tag runs is served once one is ready.
func TestDockerHeldBeforeFirstContainer(t *testing.T) {
	tag := newTag(t, "v1")
	p := startProxy(t, zeroDowntimeConfig(tag))
	p.logs.waitLog(t, 10*time.Second, "no container of the tag is running yet")
	got := make(chan error, 1)
	go func() {
		_, err := httpGet(p.addrs[0], "/")
		got <- err
	}()
	startCtr(t, tag, "-ready_after", "500ms")
	if err := <-got; err != nil {
		t.Fatalf("held request: %v", err)
	}
}

// TestDockerFailback: a new version that crashes, or starts failing its
// status check, a moment after it became ready hands back to the previous
// one, whose removal is cancelled; no request fails.
func TestDockerFailback(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		log  string
	}{
		{"crash", []string{"-exit_after", "300ms"}, "serving container stopped"},
		{"unready", []string{"-unready_after", "300ms"}, "serving container failing its status check"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tag := newTag(t, "v1")
			old := startCtr(t, tag)
			cfg := zeroDowntimeConfig(tag)
			cfg.grace = 5 * time.Second
			p := startProxy(t, cfg)
			waitServed(t, p.addrs[0], old, 10*time.Second)
			l := startLoad(t, p.addrs[0], 16, 2)

			bad := startCtr(t, tag, tc.args...)
			p.logs.waitLog(t, 10*time.Second, "swap", "container", bad.short())
			p.logs.waitLog(t, 10*time.Second, tc.log, "container", bad.short())
			p.logs.waitLog(t, time.Second, "rollback", "container", old.short())
			waitServed(t, p.addrs[0], old, 5*time.Second)
			// Past the old container's grace period it still runs and serves.
			deadline := time.Now().Add(cfg.grace + time.Second)
			for time.Now().Before(deadline) {
				if host := whoAnswers(t, p.addrs[0]); host != old.host {
					t.Fatalf("answered by %s after the rollback; want %s", host, old.host)
				}
				time.Sleep(100 * time.Millisecond) // pacing the checks, not synchronisation
			}
			if !ctrRunning(t, old.id) {
				t.Fatal("the previous container was removed despite the rollback")
			}
			l.expectNoFailure(t)
		})
	}
}

// TestDockerDrain: with -drain, the old container goes as soon as the last
// connection it carries closes, long before its grace period ends; while
// one is open, it stays.
func TestDockerDrain(t *testing.T) {
	tag := newTag(t, "v1")
	old := startCtr(t, tag, "-echo", ":7")
	cfg := zeroDowntimeConfig(tag)
	cfg.ports = append(cfg.ports, portMap{7, 7})
	cfg.drain, cfg.grace = true, time.Minute
	p := startProxy(t, cfg)
	waitServed(t, p.addrs[0], old, 10*time.Second)
	conn := dialTCP(t, p.addrs[1])
	echoOnce(t, conn, "to the old container")

	nu := startCtr(t, tag, "-echo", ":7")
	waitServed(t, p.addrs[0], nu, 10*time.Second)
	echoOnce(t, conn, "still to the old container")
	if !ctrRunning(t, old.id) {
		t.Fatal("the old container went while it carried a connection")
	}
	_ = conn.Close()
	eventually(t, 15*time.Second, "old container removed after its last connection closed",
		func() bool { return !ctrExists(t, old.id) })
}

// TestDockerMaxConns: past -max_conns, new clients wait in the kernel's
// backlog, and are served as soon as a connection closes.
func TestDockerMaxConns(t *testing.T) {
	tag := newTag(t, "v1")
	startCtr(t, tag, "-http", "", "-echo", ":7")
	cfg := zeroDowntimeConfig(tag)
	cfg.ports, cfg.statusURL, cfg.maxConns = []portMap{{7, 7}}, statusURL{}, 2
	p := startProxy(t, cfg)
	p.logs.waitLog(t, 10*time.Second, "serving")
	a, b := dialTCP(t, p.addrs[0]), dialTCP(t, p.addrs[0])
	echoOnce(t, a, "one")
	echoOnce(t, b, "two")
	third := dialTCP(t, p.addrs[0]) // connected by the kernel, not accepted
	if echoesWithin(third, "three\n", 500*time.Millisecond) {
		t.Fatal("a third connection was served with -max_conns 2")
	}
	_ = a.Close()
	expectEcho(t, third, "three\n")
	echoOnce(t, b, "two, still")
}
