package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	cerrdefs "github.com/containerd/errdefs"
)

// The control API: HTTP on a unix socket, for docker-proxy wait, deploy
// and status, and for any other tool (curl --unix-socket). Only the
// proxy's user may connect (mode 0600): whoever can also reaches
// docker.sock, so the API need not be more careful than Docker's. It only
// reads: nothing a client sends changes what the proxy does.
//
//	GET /v1/status            the status document (see status)
//	GET /v1/events            the status document, then events and the
//	                          status after them as JSON lines, as they happen
//	GET /v1/containers/{ref}  a container by id, short id or name, as Docker
//	                          knows it, and whether the proxy selects it
//
// Every answer carries the header Docker-Proxy-Api: 1, by which a client
// tells a docker-proxy from anything else listening on a socket.

const (
	controlAPI    = 1
	controlHeader = "Docker-Proxy-Api"
	controlDir    = "/run/docker-proxy"
	controlAuto   = "auto"

	controlMaxConns = 64                             // clients at once: each wait holds one
	controlRefresh  = 5 * time.Second                // an event stream sends the status this often
	controlWrite    = 30 * time.Second               // a write to a client that does not read fails after this
	maxUnixPath     = len("/run/docker-proxy/") + 80 // well inside sun_path's 108 bytes
)

// controlPath is the control socket's path for cfg, "" for none: -control,
// or with auto one derived from -address and the host ports, so that two
// proxies on one host never share one.
func controlPath(cfg config) string {
	if cfg.control != controlAuto {
		return cfg.control
	}
	return autoControlPath(cfg.address, cfg.ports)
}

func autoControlPath(address string, ports []portMap) string {
	name := address + "-" + hostPortList(ports) + ".sock"
	if len(controlDir)+1+len(name) > maxUnixPath {
		sum := sha256.Sum256([]byte(name))
		name = hex.EncodeToString(sum[:10]) + ".sock"
	}
	return filepath.Join(controlDir, name)
}

// hostPortList is the host ports, sorted and comma-delimited: the same for
// any order of -ports.
func hostPortList(ports []portMap) string {
	hosts := make([]int, len(ports))
	for i, p := range ports {
		hosts[i] = int(p.host)
	}
	slices.Sort(hosts)
	parts := make([]string, len(hosts))
	for i, h := range hosts {
		parts[i] = strconv.Itoa(h)
	}
	return strings.Join(parts, ",")
}

// listenControl opens the control socket at path. A socket left by a
// proxy that is gone is replaced; one that a live process answers on is
// not.
func listenControl(path string) (*net.UnixListener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != os.ModeSocket {
			return nil, fmt.Errorf("control socket %s: a file that is not a socket is in the way", path)
		}
		c, err := net.DialTimeout("unix", path, time.Second)
		if err == nil {
			_ = c.Close()
			return nil, fmt.Errorf("control socket %s: another process listens on it (another docker-proxy for the same ports?)", path)
		}
		_ = os.Remove(path) // left by a process that is gone
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		_ = ln.Close()
		return nil, fmt.Errorf("control socket: %w", err)
	}
	return ln, nil
}

// limitListener accepts at most n connections at once, like
// netutil.LimitListener, but hands out the *net.UnixConn itself, so that a
// hand-over can pass descriptors on a hijacked one.
type limitListener struct {
	*net.UnixListener
	sem    chan struct{}
	closed chan struct{}
	once   sync.Once
}

func newLimitListener(ln *net.UnixListener, n int) *limitListener {
	return &limitListener{UnixListener: ln, sem: make(chan struct{}, n), closed: make(chan struct{})}
}

func (l *limitListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return l.UnixListener.Close()
}

type limitConn struct {
	*net.UnixConn
	release func()
}

func (c *limitConn) Close() error {
	err := c.UnixConn.Close()
	c.release()
	return err
}

func (l *limitListener) Accept() (net.Conn, error) {
	select {
	case l.sem <- struct{}{}:
	case <-l.closed:
		return nil, net.ErrClosed
	}
	c, err := l.AcceptUnix()
	if err != nil {
		<-l.sem
		return nil, err
	}
	return &limitConn{c, sync.OnceFunc(func() { <-l.sem })}, nil
}

// control serves the control API.
type control struct {
	rn        *runner
	connected *atomic.Bool // the Docker event stream is up
	docker    dockerAPI
	sel       selector
	log       *slog.Logger
	source    *handoverSource // what a successor takes over; nil: nothing
	handing   atomic.Bool     // a hand-over is under way

	handMu  sync.Mutex    // guards handEnd
	handEnd chan struct{} // closed when the hand-over under way ends (nil: none yet)

	pathMu sync.Mutex // guards released, and the control socket's unlink-on-close
	// released: the control socket's descriptor may be a successor's:
	// closing it must not remove its path.
	released bool
}

// release makes closing the control socket leave its path: a successor
// may hold it from now on.
func (c *control) release() {
	c.pathMu.Lock()
	defer c.pathMu.Unlock()
	c.released = true
	if c.source != nil && c.source.control != nil {
		c.source.control.SetUnlinkOnClose(false)
	}
}

// claim makes closing the control socket remove its path, as for one this
// process made: a successor calls it once its predecessor has stopped
// accepting, unless it has handed the socket on meanwhile.
func (c *control) claim() {
	c.pathMu.Lock()
	defer c.pathMu.Unlock()
	if !c.released && c.source != nil && c.source.control != nil {
		c.source.control.SetUnlinkOnClose(true)
	}
}

// controlContainer is the answer of /v1/containers/{ref}.
type controlContainer struct {
	ID       string    `json:"id"`
	Name     string    `json:"name"`
	Image    string    `json:"image"`
	Created  time.Time `json:"created"`
	State    string    `json:"state"` // Docker's: running, exited...
	Selected bool      `json:"selected"`
}

// controlLine is one line of /v1/events: an event or a status.
type controlLine struct {
	Event  *deployEvent `json:"event,omitempty"`
	Status *status      `json:"status,omitempty"`
}

func (c *control) serve(ctx context.Context, ln *net.UnixListener) error {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/handover", c.takeoverRequest)
	mux.HandleFunc("GET /v1/status", c.status)
	mux.HandleFunc("GET /v1/events", c.events)
	mux.HandleFunc("GET /v1/containers/{ref}", c.container)
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set(controlHeader, strconv.Itoa(controlAPI))
			mux.ServeHTTP(w, r)
		}),
		ReadHeaderTimeout: 5 * time.Second,
		IdleTimeout:       5 * time.Second, // a kept-alive client holds one of controlMaxConns
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(c.log.Handler(), slog.LevelWarn),
	}
	context.AfterFunc(ctx, func() { _ = srv.Close() })
	c.log.Info("serving the control API", "socket", ln.Addr().String())
	if err := srv.Serve(newLimitListener(ln, controlMaxConns)); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// now is the status document as of now.
func (c *control) now(s *status) *status {
	if s == nil {
		s = &status{API: controlAPI}
	}
	cur := s.current(c.connected.Load(), time.Now())
	return &cur
}

func (c *control) status(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(c.now(c.rn.snap.Load()))
}

func (c *control) events(w http.ResponseWriter, r *http.Request) {
	last, updates, cancel := c.rn.feed.subscribe()
	defer cancel()
	w.Header().Set("Content-Type", "application/x-ndjson")
	rc := http.NewResponseController(w)
	enc := json.NewEncoder(w)
	send := func(lines ...controlLine) bool {
		// A client that does not read gives up its connection, rather
		// than hold one of the few for ever.
		_ = rc.SetWriteDeadline(time.Now().Add(controlWrite))
		for _, l := range lines {
			if enc.Encode(l) != nil {
				return false
			}
		}
		return rc.Flush() == nil
	}
	if !send(controlLine{Status: c.now(last)}) {
		return
	}
	refresh := time.NewTicker(controlRefresh)
	defer refresh.Stop()
	for {
		var lines []controlLine
		select {
		case u, ok := <-updates:
			if !ok {
				return // fell behind: the client reconnects
			}
			for i := range u.events {
				lines = append(lines, controlLine{Event: &u.events[i]})
			}
			last = u.status
		case <-refresh.C:
		case <-r.Context().Done():
			return
		}
		if !send(append(lines, controlLine{Status: c.now(last)})...) {
			return
		}
	}
}

func (c *control) container(w http.ResponseWriter, r *http.Request) {
	ref := r.PathValue("ref")
	if !validRef(ref) {
		// Docker's client joins a ref into the API path: ../images/x
		// would inspect an image, . list the containers.
		http.Error(w, fmt.Sprintf("no such container: %s", ref), http.StatusNotFound)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), dockerTimeout)
	defer cancel()
	info, err := c.docker.ContainerInspect(ctx, ref)
	switch {
	case cerrdefs.IsNotFound(err):
		http.Error(w, fmt.Sprintf("no such container: %s", ref), http.StatusNotFound)
		return
	case err != nil:
		http.Error(w, fmt.Sprintf("inspect %s: %v", ref, err), http.StatusBadGateway)
		return
	case info.ContainerJSONBase == nil || info.Config == nil || info.State == nil:
		http.Error(w, fmt.Sprintf("inspect %s: the daemon's answer lacks its configuration", ref), http.StatusBadGateway)
		return
	}
	created, _ := time.Parse(time.RFC3339Nano, info.Created)
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(controlContainer{
		Created:  created,
		ID:       info.ID,
		Name:     strings.TrimPrefix(info.Name, "/"),
		Image:    info.Config.Image,
		State:    info.State.Status,
		Selected: c.sel.match(info.Config.Image, info.Config.Labels),
	})
}

// validRef tells whether ref can be a container's id or name (Docker's
// [a-zA-Z0-9][a-zA-Z0-9_.-]*, after an optional leading slash).
func validRef(ref string) bool {
	ref = strings.TrimPrefix(ref, "/")
	if ref == "" || !isAlnum(ref[0]) {
		return false
	}
	for i := 1; i < len(ref); i++ {
		if c := ref[i]; !isAlnum(c) && c != '_' && c != '.' && c != '-' {
			return false
		}
	}
	return true
}

func isAlnum(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
}
