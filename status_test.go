package main

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestParseStatusURL covers the accepted forms of -status_url and the ones
// refused because the host is always the container, or the port or URI is
// bad. Errors must quote the whole value, so the user sees what was wrong.
func TestParseStatusURL(t *testing.T) {
	valid := []struct {
		in   string
		want statusURL
	}{
		{":80/server-status", statusURL{80, "/server-status"}},
		{":8080", statusURL{8080, "/"}},
		{":80/", statusURL{80, "/"}},
		{":80/a?b=c", statusURL{80, "/a?b=c"}},
		{":65535/x/y", statusURL{65535, "/x/y"}},
	}
	for _, tt := range valid {
		t.Run(tt.in, func(t *testing.T) {
			got, err := parseStatusURL(tt.in)
			if err != nil {
				t.Fatalf("parseStatusURL(%q): %v", tt.in, err)
			}
			if got != tt.want {
				t.Errorf("got %+v; want %+v", got, tt.want)
			}
		})
	}

	invalid := []struct{ name, in string }{
		{"no colon", "80/x"},
		{"scheme and host", "http://x:80/"},
		{"port 0", ":0/x"},
		{"port too big", ":70000/"},
		{"port not a number", ":abc/"},
		{"no port", ":/x"},
		{"space in URI", ":80/a b"},
		{"fragment", ":80/a#b"},
		{"empty", ""},
	}
	for _, tt := range invalid {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseStatusURL(tt.in)
			if err == nil {
				t.Fatalf("parseStatusURL(%q) = %+v; want an error", tt.in, got)
			}
			if q := strconv.Quote(tt.in); !strings.Contains(err.Error(), q) {
				t.Errorf("got error %q; want it to contain %s", err, q)
			}
		})
	}
}

// FuzzParseStatusURL checks that no input makes parseStatusURL panic and
// that an accepted value prints to a form that parses back to itself (the
// -h default and the flag's String use it).
func FuzzParseStatusURL(f *testing.F) {
	for _, s := range []string{
		":80/server-status", ":8080", ":80/a?b=c", "80/x", "http://x:80/", ":0/x",
		":70000/", ":abc/", ":/x", ":80/a b", "", ":080/x", ":80/%zz", ":80//x",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		u, err := parseStatusURL(s)
		if err != nil {
			if u != (statusURL{}) {
				t.Errorf("parseStatusURL(%q) = %+v with error %v; want the zero value", s, u, err)
			}
			return
		}
		if u.port == 0 || !strings.HasPrefix(u.uri, "/") {
			t.Errorf("parseStatusURL(%q) = %+v; want a port and a URI starting with /", s, u)
		}
		again, err := parseStatusURL(u.String())
		if err != nil {
			t.Fatalf("parseStatusURL(%q) (printed from %q): %v", u.String(), s, err)
		}
		if again != u {
			t.Errorf("round trip of %q via %q: got %+v; want %+v", s, u.String(), again, u)
		}
	})
}

// statusTestIP is where the test servers listen: httptest binds 127.0.0.1.
var statusTestIP = netip.MustParseAddr("127.0.0.1")

// newStatusServer starts an HTTP server on 127.0.0.1 and returns a checker
// aimed at uri on it, as the proxy would aim at a container.
func newStatusServer(t *testing.T, uri string, h http.HandlerFunc) (*httptest.Server, *checker) {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	ap, err := netip.ParseAddrPort(srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	if ap.Addr() != statusTestIP {
		t.Skipf("test server listens on %v, not %v", ap.Addr(), statusTestIP)
	}
	return srv, newChecker(statusURL{port: ap.Port(), uri: uri}, 0)
}

// releaseOnCleanup returns a channel closed when the test ends, so that handlers
// that hang let the server close.
func releaseOnCleanup(t *testing.T) <-chan struct{} {
	c := make(chan struct{})
	t.Cleanup(func() { close(c) }) // runs before srv.Close: cleanups are LIFO
	return c
}

// TestCheckerProbeStatus checks that only a 200 answer means ready, and
// that the request goes to the configured URI.
func TestCheckerProbeStatus(t *testing.T) {
	tests := []struct {
		code  int
		ready bool
	}{
		{http.StatusOK, true},
		{http.StatusNoContent, false},
		{http.StatusNotFound, false},
		{http.StatusInternalServerError, false},
		{http.StatusServiceUnavailable, false},
	}
	for _, tt := range tests {
		t.Run(strconv.Itoa(tt.code), func(t *testing.T) {
			var gotURI atomic.Value
			_, c := newStatusServer(t, "/server-status?auto", func(w http.ResponseWriter, r *http.Request) {
				gotURI.Store(r.URL.RequestURI())
				w.WriteHeader(tt.code)
			})
			err := c.probe(t.Context(), statusTestIP)
			if ready := err == nil; ready != tt.ready {
				t.Errorf("got ready %v (err %v); want %v", ready, err, tt.ready)
			}
			if err != nil && !strings.Contains(err.Error(), strconv.Itoa(tt.code)) {
				t.Errorf("got error %q; want it to name the status %d", err, tt.code)
			}
			if got, want := gotURI.Load(), "/server-status?auto"; got != want {
				t.Errorf("got request URI %v; want %v", got, want)
			}
		})
	}
}

// TestCheckerProbeRedirect checks that a redirect is followed only on the
// container that sent it: the status URL must not reach another host.
func TestCheckerProbeRedirect(t *testing.T) {
	t.Run("same host", func(t *testing.T) {
		_, c := newStatusServer(t, "/status", func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/status" {
				http.Redirect(w, r, "/status/", http.StatusFound)
				return
			}
			w.WriteHeader(http.StatusOK)
		})
		if err := c.probe(t.Context(), statusTestIP); err != nil {
			t.Errorf("got %v; want ready", err)
		}
	})

	t.Run("same host, failing target", func(t *testing.T) {
		_, c := newStatusServer(t, "/status", func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/status" {
				http.Redirect(w, r, "/down", http.StatusFound)
				return
			}
			w.WriteHeader(http.StatusServiceUnavailable)
		})
		if err := c.probe(t.Context(), statusTestIP); err == nil {
			t.Error("got ready; want the 503 of the redirect target to count")
		}
	})

	t.Run("other host", func(t *testing.T) {
		// Listen on 127.0.0.2 if the host allows it, to prove that no
		// request arrives there; else aim at a port nobody listens on.
		var hits atomic.Int32
		other := "127.0.0.2:1"
		if ln, err := net.Listen("tcp", "127.0.0.2:0"); err == nil {
			srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				hits.Add(1)
			}))
			_ = srv.Listener.Close()
			srv.Listener = ln
			srv.Start()
			t.Cleanup(srv.Close)
			other = ln.Addr().String()
		}
		_, c := newStatusServer(t, "/status", func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, "http://"+other+"/status", http.StatusFound)
		})
		err := c.probe(t.Context(), statusTestIP)
		if err == nil || !strings.Contains(err.Error(), "another host") {
			t.Errorf("got %v; want a refused redirect to another host", err)
		}
		if n := hits.Load(); n != 0 {
			t.Errorf("got %d requests on the other host; want 0", n)
		}
	})

	t.Run("loop", func(t *testing.T) {
		_, c := newStatusServer(t, "/status", func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, "/status", http.StatusFound)
		})
		err := c.probe(t.Context(), statusTestIP)
		if err == nil || !strings.Contains(err.Error(), "too many redirects") {
			t.Errorf("got %v; want too many redirects", err)
		}
	})
}

// TestCheckerProbeBoundedBody checks that a huge status page is read only
// up to statusMaxBody and still counts as ready: the handler sends more
// than the bound and then hangs without ending the body, so a reader that
// wanted the whole body would wait for the attempt timeout.
func TestCheckerProbeBoundedBody(t *testing.T) {
	done := releaseOnCleanup(t)
	_, c := newStatusServer(t, "/", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(make([]byte, 4*statusMaxBody))
		w.(http.Flusher).Flush()
		select {
		case <-r.Context().Done():
		case <-done:
		}
	})
	start := time.Now()
	if err := c.probe(t.Context(), statusTestIP); err != nil {
		t.Fatalf("got %v; want ready", err)
	}
	if d := time.Since(start); d >= statusAttempt/2 {
		t.Errorf("probe took %v; want well under the attempt timeout %v", d, statusAttempt)
	}
}

// TestCheckerProbeHungAttempt checks that an attempt that hangs fails on
// its own timeout, so that the rule's next probe can succeed.
func TestCheckerProbeHungAttempt(t *testing.T) {
	done := releaseOnCleanup(t)
	var attempts atomic.Int32
	_, c := newStatusServer(t, "/", func(w http.ResponseWriter, r *http.Request) {
		if attempts.Add(1) == 1 {
			select { // hang until the client gives up
			case <-r.Context().Done():
			case <-done:
			}
			return
		}
		w.WriteHeader(http.StatusOK)
	})
	start := time.Now()
	if err := c.probe(t.Context(), statusTestIP); err == nil {
		t.Fatal("a hung attempt succeeded")
	}
	if d := time.Since(start); d < statusAttempt || d > statusAttempt+time.Second {
		t.Errorf("the hung attempt failed after %v; want its timeout %v", d, statusAttempt)
	}
	if err := c.probe(t.Context(), statusTestIP); err != nil {
		t.Errorf("the next attempt: got %v; want ready", err)
	}
}

// TestCheckerProbeCanceled checks that a cancelled attempt (the container
// stopped, the proxy stops) ends at once.
func TestCheckerProbeCanceled(t *testing.T) {
	done := releaseOnCleanup(t)
	hit := make(chan struct{}, 1)
	_, c := newStatusServer(t, "/", func(w http.ResponseWriter, r *http.Request) {
		hit <- struct{}{}
		select {
		case <-r.Context().Done():
		case <-done:
		}
	})
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- c.probe(ctx, statusTestIP) }()
	select {
	case <-hit:
	case <-time.After(5 * time.Second):
		t.Fatal("no attempt within 5s")
	}
	cancel()
	start := time.Now()
	select {
	case err := <-errc:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("got %v; want context.Canceled", err)
		}
		if d := time.Since(start); d > statusAttempt/2 {
			t.Errorf("returned %v after cancel; want promptly", d)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("probe still running 5s after cancel")
	}
}

// TestReadinessPort checks what is probed by default: with no -status_url
// and no -status_port, the container port of the first mapping (outage 1:
// a container that does not listen, a one-off of the image, is not ready).
func TestReadinessPort(t *testing.T) {
	ports := []portMap{{8080, 3000}, {443, 443}}
	tests := []struct {
		name string
		cfg  config
		want uint16
	}{
		{"default", config{ports: ports}, 3000},
		{"-status_port", config{ports: ports, statusPort: 9000}, 9000},
		{"-status_url", config{ports: ports, statusURL: statusURL{port: 80, uri: "/"}}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := readinessPort(tt.cfg); got != tt.want {
				t.Errorf("got %d; want %d", got, tt.want)
			}
		})
	}
}
