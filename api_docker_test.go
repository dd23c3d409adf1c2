package main

// The proxy and the Docker API it is given: an API that goes away and comes
// back, and an API that allows only the calls the proxy needs.

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/api/types/events"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/client"
)

// apiProxy is the test's own HTTP proxy in front of docker.sock, on a
// loopback TCP port. It can be cut and restored, and it can refuse every
// call that allow rejects with 403, as a socket proxy would.
type apiProxy struct {
	t     testing.TB
	addr  string
	allow func(method, path string) bool
	rp    *httputil.ReverseProxy

	mu      sync.Mutex
	srv     *http.Server
	refused []string // method and path of every refused call
	events  []string // the query of every GET /events
}

func startAPIProxy(t testing.TB, allow func(method, path string) bool) *apiProxy {
	t.Helper()
	needDocker(t)
	rp := socketProxy()
	a := &apiProxy{t: t, allow: allow, rp: rp}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a.addr = ln.Addr().String()
	a.serve(ln)
	t.Cleanup(a.cut)
	return a
}

// socketProxy is a reverse proxy to the local daemon's socket.
func socketProxy() *httputil.ReverseProxy {
	target, _ := url.Parse("http://docker")
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.FlushInterval = -1 // the event stream must flow at once
	rp.Transport = &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", "/var/run/docker.sock")
		},
	}
	return rp
}

var apiVersion = regexp.MustCompile(`^/v[0-9.]+`)

func (a *apiProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	path := apiVersion.ReplaceAllString(r.URL.Path, "")
	if path == "/events" {
		a.mu.Lock()
		a.events = append(a.events, r.URL.RawQuery)
		a.mu.Unlock()
	}
	if a.allow != nil && !a.allow(r.Method, path) {
		a.mu.Lock()
		a.refused = append(a.refused, r.Method+" "+path)
		a.mu.Unlock()
		http.Error(w, `{"message":"refused by the test's socket proxy"}`, http.StatusForbidden)
		return
	}
	a.rp.ServeHTTP(w, r)
}

func (a *apiProxy) serve(ln net.Listener) {
	srv := &http.Server{Handler: a}
	a.mu.Lock()
	a.srv = srv
	a.mu.Unlock()
	go func() { _ = srv.Serve(ln) }()
}

// cut closes the listener and every open connection, the event stream too.
func (a *apiProxy) cut() {
	a.mu.Lock()
	srv := a.srv
	a.srv = nil
	a.mu.Unlock()
	if srv != nil {
		_ = srv.Close()
	}
}

// restore listens again on the same address.
func (a *apiProxy) restore() {
	a.t.Helper()
	var ln net.Listener
	var err error
	eventually(a.t, 10*time.Second, "listening again on "+a.addr, func() bool {
		ln, err = net.Listen("tcp", a.addr)
		return err == nil
	})
	a.serve(ln)
}

func (a *apiProxy) refusedCalls() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.refused...)
}

// client returns a Docker client of the proxied API, as -docker
// tcp://addr makes one.
func (a *apiProxy) client() *client.Client {
	a.t.Helper()
	cli, err := client.NewClientWithOpts(client.WithHost("tcp://"+a.addr), client.WithAPIVersionNegotiation())
	if err != nil {
		a.t.Fatal(err)
	}
	a.t.Cleanup(func() { _ = cli.Close() })
	return cli
}

// TestDockerAPIOutage: while the API is unreachable the current container
// keeps serving with no failed request; a deploy made meanwhile is picked
// up within seconds of the API's return; the outage is logged once.
func TestDockerAPIOutage(t *testing.T) {
	tag := newTag(t, "v1")
	old := startCtr(t, tag)
	api := startAPIProxy(t, nil)
	cfg := zeroDowntimeConfig(tag)
	p := startProxyWith(t, cfg, api.client())
	waitServed(t, p.addrs[0], old, 10*time.Second)
	l := startLoad(t, p.addrs[0], 8, 1)

	api.cut()
	p.logs.waitLog(t, 10*time.Second, "event stream lost, reconnecting")
	nu := startCtr(t, tag) // deployed while the proxy cannot see it
	// Let several reconnects fail: the backoff grows, the log stays quiet.
	eventually(t, 10*time.Second, "several failed reconnects", func() bool {
		return len(p.logs.lines("event stream still down")) >= 3
	})
	for range 5 {
		if host := whoAnswers(t, p.addrs[0]); host != old.host {
			t.Fatalf("answered by %s during the outage; want %s", host, old.host)
		}
	}

	api.mu.Lock()
	subscribed := len(api.events)
	api.mu.Unlock()
	api.restore()
	waitServed(t, p.addrs[0], nu, 15*time.Second)
	// The new subscription asked for the events it missed.
	api.mu.Lock()
	resumed := append([]string(nil), api.events[subscribed:]...)
	api.mu.Unlock()
	if len(resumed) == 0 || !strings.Contains(resumed[0], "since=") {
		t.Errorf("event subscriptions after the outage: %q; want one with since=", resumed)
	}
	p.logs.waitLog(t, time.Second, "event stream restored")
	eventually(t, 10*time.Second, "old container removed", func() bool { return !ctrExists(t, old.id) })
	l.expectNoFailure(t)
	if n := len(p.logs.lines("event stream lost, reconnecting")); n != 1 {
		t.Errorf("logged the outage %d times at warning level; want once", n)
	}
	for _, line := range p.logs.lines("event stream still down") {
		if line["level"] != "DEBUG" {
			t.Errorf("a retry logged at %v; want DEBUG", line["level"])
		}
	}
}

var (
	idPath  = `/containers/[0-9a-f]+`
	readAPI = []*regexp.Regexp{
		regexp.MustCompile(`^(GET|HEAD) /_ping$`),
		regexp.MustCompile(`^GET /events$`),
		regexp.MustCompile(`^GET /containers/json$`),
		regexp.MustCompile(`^GET ` + idPath + `/json$`),
	}
	removeAPI = regexp.MustCompile(`^DELETE ` + idPath + `$`)
	stopAPI   = regexp.MustCompile(`^POST ` + idPath + `/stop$`)
)

// allowOnly allows the read calls the proxy needs, and the extra ones.
func allowOnly(extra ...*regexp.Regexp) func(method, path string) bool {
	return func(method, path string) bool {
		call := method + " " + path
		for _, re := range append(readAPI, extra...) {
			if re.MatchString(call) {
				return true
			}
		}
		return false
	}
}

// TestDockerLeastPrivilege: the proxy deploys through an API that allows
// only events, list, inspect and the one write its -retire mode needs,
// and refuses everything else with 403.
func TestDockerLeastPrivilege(t *testing.T) {
	for _, tc := range []struct {
		mode        retireMode
		stopTimeout time.Duration
		allow       []*regexp.Regexp
		check       func(t *testing.T, old testCtr)
	}{
		{retireRemove, 0, []*regexp.Regexp{removeAPI}, func(t *testing.T, old testCtr) {
			eventually(t, 10*time.Second, "old container removed", func() bool { return !ctrExists(t, old.id) })
		}},
		{retireRemove, 5 * time.Second, []*regexp.Regexp{removeAPI, stopAPI}, func(t *testing.T, old testCtr) {
			eventually(t, 15*time.Second, "old container removed", func() bool { return !ctrExists(t, old.id) })
		}},
		{retireStop, 0, []*regexp.Regexp{stopAPI}, func(t *testing.T, old testCtr) {
			eventually(t, 15*time.Second, "old container stopped", func() bool { return !ctrRunning(t, old.id) })
			if !ctrExists(t, old.id) {
				t.Error("-retire stop removed the old container")
			}
		}},
		{retireNone, 0, nil, func(t *testing.T, old testCtr) {
			eventually(t, 10*time.Second, "old container retired", func() bool {
				return len(lastLogs.lines("left running", "container", old.short())) > 0
			})
			if !ctrRunning(t, old.id) {
				t.Error("-retire none stopped the old container")
			}
		}},
	} {
		t.Run(fmt.Sprintf("%s,stop_timeout=%v", tc.mode, tc.stopTimeout), func(t *testing.T) {
			tag := newTag(t, "v1")
			old := startCtr(t, tag)
			api := startAPIProxy(t, allowOnly(tc.allow...))
			cfg := zeroDowntimeConfig(tag)
			cfg.retire, cfg.stopTimeout = tc.mode, tc.stopTimeout
			p := startProxyWith(t, cfg, api.client())
			lastLogs = p.logs
			waitServed(t, p.addrs[0], old, 10*time.Second)
			nu := startCtr(t, tag)
			waitServed(t, p.addrs[0], nu, 10*time.Second)
			tc.check(t, old)
			if refused := api.refusedCalls(); len(refused) > 0 {
				t.Errorf("the proxy made calls its mode does not need: %v", refused)
			}
			if len(p.logs.lines("retire failed")) > 0 {
				t.Errorf("retiring failed:\n%s", p.logs.String())
			}
		})
	}
}

// lastLogs lets a table case read the logs of the proxy its subtest runs.
var lastLogs *logBuffer

// TestDockerStopTimeoutStopsCleanly: with -stop_timeout the old container
// gets SIGTERM and time to exit on its own (exit code 0) before removal.
func TestDockerStopTimeoutStopsCleanly(t *testing.T) {
	tag := newTag(t, "v1")
	old := startCtr(t, tag)
	cfg := zeroDowntimeConfig(tag)
	cfg.stopTimeout = 5 * time.Second
	p := startProxy(t, cfg)
	waitServed(t, p.addrs[0], old, 10*time.Second)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	msgs, errs := dockerCli.Events(ctx, events.ListOptions{Filters: filters.NewArgs(
		filters.Arg("container", old.id), filters.Arg("event", "die"))})
	nu := startCtr(t, tag)
	waitServed(t, p.addrs[0], nu, 10*time.Second)
	select {
	case m := <-msgs:
		if code := m.Actor.Attributes["exitCode"]; code != "0" {
			t.Errorf("old container died with exit code %s; want 0 (a clean stop)", code)
		}
	case err := <-errs:
		t.Fatalf("events: %v", err)
	case <-ctx.Done():
		t.Fatal("the old container never died")
	}
	eventually(t, 10*time.Second, "old container removed", func() bool { return !ctrExists(t, old.id) })
}
