package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// The client of the control API, as wait, deploy and status use it.

// Exit codes of the subcommands.
const (
	exitOK      = 0
	exitFailed  = 1 // the deploy failed: ignored, died, rolled back from, superseded
	exitUsage   = 2 // bad flags or arguments, an unknown container, a socket that is no docker-proxy
	exitUnknown = 3 // could not tell: the proxy unreachable or gone, or -timeout ran out
)

// cmdError is an error with the exit code it means.
type cmdError struct {
	code int
	err  error
}

func (e *cmdError) Error() string { return e.err.Error() }
func (e *cmdError) Unwrap() error { return e.err }

func failf(code int, format string, args ...any) error {
	return &cmdError{code, fmt.Errorf(format, args...)}
}

// exitCode is the exit code for err.
func exitCode(err error) int {
	var ce *cmdError
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &ce):
		return ce.code
	}
	return exitUnknown
}

// ctlClient talks to one proxy's control socket.
type ctlClient struct {
	path string
	http *http.Client
}

func newCtlClient(path string) *ctlClient {
	return &ctlClient{path: path, http: &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
		DisableKeepAlives:     true,
		ResponseHeaderTimeout: 30 * time.Second, // a container look-up is one inspect
	}}}
}

// get sends GET path and checks that a docker-proxy answered it.
func (c *ctlClient) get(ctx context.Context, path string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://docker-proxy"+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		var op *net.OpError
		var ne net.Error
		if errors.As(err, &op) && op.Op == "dial" || errors.As(err, &ne) && ne.Timeout() {
			return nil, failf(exitUnknown, "no docker-proxy answers on %s: %w", c.path, unwrapURL(err))
		}
		return nil, failf(exitUsage, "%s is not a docker-proxy control socket: %w", c.path, unwrapURL(err))
	}
	if resp.Header.Get(controlHeader) == "" {
		_ = resp.Body.Close()
		return nil, failf(exitUsage, "%s is not a docker-proxy control socket (its answer has no %s header)", c.path, controlHeader)
	}
	return resp, nil
}

// unwrapURL drops net/http's "Get \"http://docker-proxy/...\":" prefix,
// which names no real URL.
func unwrapURL(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// getJSON GETs path into v.
func (c *ctlClient) getJSON(ctx context.Context, path string, v any) error {
	resp, err := c.get(ctx, path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<10))
		code := exitUnknown
		if resp.StatusCode == http.StatusNotFound {
			code = exitUsage
		}
		return failf(code, "%s", strings.TrimSpace(string(msg)))
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 16<<20)).Decode(v); err != nil {
		return failf(exitUnknown, "read %s from %s: %w", path, c.path, err)
	}
	return nil
}

// status reads the proxy's status document.
func (c *ctlClient) status(ctx context.Context) (*status, error) {
	var s status
	if err := c.getJSON(ctx, "/v1/status", &s); err != nil {
		return nil, err
	}
	return &s, nil
}

// container looks ref up as Docker knows it.
func (c *ctlClient) container(ctx context.Context, ref string) (controlContainer, error) {
	var cc controlContainer
	err := c.getJSON(ctx, "/v1/containers/"+url.PathEscape(ref), &cc)
	return cc, err
}

// events opens the event stream: each line is sent on the channel until
// the stream ends (the channel is closed then) or ctx ends.
func (c *ctlClient) events(ctx context.Context) (<-chan controlLine, error) {
	resp, err := c.get(ctx, "/v1/events")
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		_ = resp.Body.Close()
		return nil, failf(exitUnknown, "%s: /v1/events: %s", c.path, resp.Status)
	}
	ch := make(chan controlLine)
	go func() {
		defer close(ch)
		defer resp.Body.Close()
		context.AfterFunc(ctx, func() { _ = resp.Body.Close() })
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 64<<10), 16<<20)
		for sc.Scan() {
			var l controlLine
			if json.Unmarshal(sc.Bytes(), &l) != nil {
				continue // a line of a later version: skip it
			}
			select {
			case ch <- l:
			case <-ctx.Done():
				return
			}
		}
	}()
	return ch, nil
}

// ctlFlags are the flags that find the proxy, shared by the subcommands.
type ctlFlags struct {
	control, address, ports string
}

// findControl picks the control socket: -control; else the one -address
// and -ports name (as the proxy derives it); else the only one in
// controlDir. The DOCKER_PROXY_* variables the daemon reads count as
// flags, so that `docker exec PROXY /docker-proxy wait ID` finds the
// proxy's socket from the container's own environment.
func (f ctlFlags) findControl() (string, error) {
	env := func(v, name string) string {
		if v == "" {
			return os.Getenv(envVar(name))
		}
		return v
	}
	control, address, ports := env(f.control, "control"), env(f.address, "address"), env(f.ports, "ports")
	if control != "" && control != controlAuto {
		return control, nil
	}
	if ports != "" {
		pm, err := parsePorts(ports)
		if err != nil {
			return "", failf(exitUsage, "invalid value %q for flag -ports: %w", ports, err)
		}
		if address == "" {
			address = "0.0.0.0"
		}
		return autoControlPath(address, pm), nil
	}
	found := liveSockets(filepath.Join(controlDir, "*.sock"))
	switch len(found) {
	case 0:
		return "", failf(exitUnknown, "no docker-proxy control socket in %s: is the proxy running, with -control on? (or give -control PATH)", controlDir)
	case 1:
		return found[0], nil
	}
	return "", failf(exitUsage, "several docker-proxy control sockets in %s (%s): pick one with -control PATH, or -ports as the proxy has it",
		controlDir, strings.Join(found, ", "))
}

// liveSockets returns the sockets matching pattern that a process listens
// on: one left by a proxy that was killed is no candidate.
func liveSockets(pattern string) []string {
	all, _ := filepath.Glob(pattern)
	var live []string
	for _, path := range all {
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			_ = c.Close()
			live = append(live, path)
		}
	}
	return live
}
