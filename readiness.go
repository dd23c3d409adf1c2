package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Readiness probing. A poll interval of 200ms keeps a swap prompt while a
// container starts (the rule probes that fast only then: see rule.go); each
// attempt has its own timeout so that one hung request cannot eat the whole
// -status_timeout.
const (
	statusInterval = 200 * time.Millisecond
	statusAttempt  = time.Second
	statusMaxBody  = 64 << 10
)

// statusURL is a -status_url value: a port and a request URI on the
// container's own address, like ":80/server-status".
type statusURL struct {
	port uint16
	uri  string
}

func (s statusURL) String() string {
	if s.port == 0 {
		return ""
	}
	return ":" + strconv.Itoa(int(s.port)) + s.uri
}

// parseStatusURL reads ":PORT/URI". The URI may be left out (":80" means
// ":80/"); a scheme or host may not, since the host is always the container.
func parseStatusURL(s string) (statusURL, error) {
	rest, ok := strings.CutPrefix(s, ":")
	if !ok {
		return statusURL{}, fmt.Errorf("%q: want a port and a URI on the container, like :80/server-status", s)
	}
	port, uri := rest, "/"
	if i := strings.IndexByte(rest, '/'); i >= 0 {
		port, uri = rest[:i], rest[i:]
	}
	p, err := parsePort(port)
	if err != nil {
		return statusURL{}, fmt.Errorf("%q: %w", s, err)
	}
	if _, err := url.ParseRequestURI(uri); err != nil || strings.ContainsAny(uri, " \t\r\n#") {
		return statusURL{}, fmt.Errorf("%q: URI %q is not a valid request path", s, uri)
	}
	return statusURL{port: p, uri: uri}, nil
}

// statusFlag lets the flag package parse and check -status_url.
type statusFlag struct{ url *statusURL }

func (f statusFlag) String() string {
	if f.url == nil {
		return ""
	}
	return f.url.String()
}

func (f statusFlag) Set(s string) error {
	u, err := parseStatusURL(s)
	if err != nil {
		return err
	}
	*f.url = u
	return nil
}

// checker decides whether a container is ready for traffic: it answers
// 200 at its status URL, or accepts a connection on its TCP port. The port
// is -status_port, or by default the container port of the first mapping
// (see readinessPort), so that a one-off container of the image that does
// not listen (a migration, a worker) never takes traffic.
type checker struct {
	url     statusURL
	tcpPort uint16
	client  *http.Client
}

func newChecker(u statusURL, tcpPort uint16) *checker {
	return &checker{
		url:     u,
		tcpPort: tcpPort,
		client: &http.Client{
			Timeout: statusAttempt,
			Transport: &http.Transport{
				Proxy:             nil, // the container is local; never ask HTTP_PROXY
				DisableKeepAlives: true,
				DialContext:       (&net.Dialer{Timeout: statusAttempt}).DialContext,
			},
			CheckRedirect: sameHostOnly,
		},
	}
}

// sameHostOnly follows a redirect only to the container that sent it.
func sameHostOnly(req *http.Request, via []*http.Request) error {
	if len(via) >= 5 {
		return errors.New("too many redirects")
	}
	if req.URL.Host != via[0].URL.Host {
		return fmt.Errorf("redirect to another host %q", req.URL.Host)
	}
	return nil
}

// probe makes one attempt: only a 200 answer, or an accepted connection,
// means ready. The TCP probe connects and closes: keep it the one place
// that knows how, so that a service that counts such a client as an error
// gets a better-behaved one here alone.
func (c *checker) probe(ctx context.Context, ip netip.Addr) error {
	if c.tcpPort != 0 {
		d := net.Dialer{Timeout: statusAttempt}
		conn, err := d.DialContext(ctx, "tcp", netip.AddrPortFrom(ip, c.tcpPort).String())
		if err != nil {
			return err
		}
		return conn.Close()
	}
	if c.url.port == 0 {
		return nil
	}
	target := "http://" + netip.AddrPortFrom(ip, c.url.port).String() + c.url.uri
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return err
	}
	resp, err := c.client.Do(req)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, statusMaxBody))
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", target, resp.Status)
	}
	return nil
}

// readinessPort is the TCP port probed when -status_url is not set:
// -status_port, else the container port of the first mapping.
func readinessPort(cfg config) uint16 {
	switch {
	case cfg.statusURL.port != 0:
		return 0
	case cfg.statusPort != 0:
		return cfg.statusPort
	case len(cfg.ports) > 0:
		return cfg.ports[0].container
	}
	return 0
}
