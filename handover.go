package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// A restart without a gap: a new docker-proxy for the same address and
// ports takes over the listening sockets of the one that runs, over its
// control socket, as HAProxy's -x and Envoy's hot restart do.
//
//  1. The new process (N) asks the old one (O) on its control socket:
//     POST /v1/handover with Upgrade: docker-proxy-handover/1 and the
//     address and host ports it listens on. O answers 101 if it speaks
//     that version and listens on the same.
//  2. N writes one byte; O sends its state (the deploy rule's records)
//     with its listeners' file descriptors (SCM_RIGHTS): the data ports,
//     the metrics port and the control socket itself.
//  3. N accepts on the same sockets, so both accept for a moment; then N
//     writes "accepting\n", and only then O stops accepting and stops its
//     deploy rule, and lets its open connections finish as on SIGTERM.
//  4. O keeps the connection open until its last connection is done (and
//     its own predecessor's, if it was handed over from one meanwhile).
//     Till N reads its end, a container O served may still carry O's
//     connections: N does not count it drained (-drain) before. (An O
//     that closes at once, or dies, only makes that wait shorter.)
//
// The sockets are never closed in between (each process holds its own
// descriptor of them), so no connection attempt is refused, and a
// connection queued in the kernel goes to whichever process accepts it
// first. A predecessor that does not speak the protocol (an older
// version), or does not answer, gets a plain start, said in one log line.

const (
	handoverProto   = "docker-proxy-handover/1"
	handoverHeader  = "Docker-Proxy-Listen"
	handoverTimeout = 10 * time.Second // each step of the exchange
	handoverAck     = "accepting\n"
	handoverStop    = "stopping\n" // O's answer to the ack: it stops accepting now
	handoverMax     = 16 << 20     // the state, at most
)

// listenID names what a proxy listens on, for a successor to match:
// the address and the sorted host ports.
func listenID(address string, ports []portMap) string {
	hosts := make([]int, len(ports))
	for i, p := range ports {
		hosts[i] = int(p.host)
	}
	slices.Sort(hosts)
	parts := make([]string, len(hosts))
	for i, h := range hosts {
		parts[i] = strconv.Itoa(h)
	}
	return address + " " + strings.Join(parts, ",")
}

// handoverState is what O sends with its descriptors.
type handoverState struct {
	Version    int              `json:"version"`
	Listeners  []handoverSocket `json:"listeners"` // one per descriptor, in order
	Containers []inheritedCtr   `json:"containers"`
	From       string           `json:"from"` // O's version string, for the log
	PID        int              `json:"pid"`
}

// handoverSocket says what one passed descriptor is.
type handoverSocket struct {
	Kind string `json:"kind"` // "port", "metrics" or "control"
	Port uint16 `json:"port,omitempty"`
	Addr string `json:"addr,omitempty"` // metrics: -metrics_address
}

// sockets are a proxy's listeners, as a predecessor hands them over.
type sockets struct {
	ports   map[uint16]*net.TCPListener
	metrics net.Listener
	control *net.UnixListener
	addr    string // metrics: the -metrics_address it was opened for
}

// --- The old process's side.

// handoverSource is what the control API needs to hand over.
type handoverSource struct {
	id      string // listenID of this proxy
	data    []*net.TCPListener
	ports   []portMap
	metrics net.Listener // nil: none
	mAddr   string
	control *net.UnixListener
	state   func(ctx context.Context) ([]inheritedCtr, func(), error) // the records, and what lets the rule go on
	done    func(conn io.Closer)                                      // N accepts: stop accepting, stop the rule, drain; close conn once drained
}

func (c *control) takeoverRequest(w http.ResponseWriter, r *http.Request) {
	h := c.source
	switch {
	case h == nil:
		http.Error(w, "this proxy hands over nothing", http.StatusNotFound)
		return
	case !strings.EqualFold(r.Header.Get("Upgrade"), handoverProto):
		w.Header().Set("Upgrade", handoverProto)
		http.Error(w, "want Upgrade: "+handoverProto, http.StatusUpgradeRequired)
		return
	case r.Header.Get(handoverHeader) != h.id:
		http.Error(w, fmt.Sprintf("this proxy listens on %q, not %q", h.id, r.Header.Get(handoverHeader)), http.StatusConflict)
		return
	case !c.handing.CompareAndSwap(false, true):
		http.Error(w, "a hand-over is under way", http.StatusConflict)
		return
	}
	err := c.sendSockets(w, r, h)
	if err != nil {
		c.handing.Store(false)
		c.log.Warn("hand-over failed: serving on", "err", err)
	}
}

func (c *control) sendSockets(w http.ResponseWriter, r *http.Request, h *handoverSource) error {
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return fmt.Errorf("hijack: %w", err)
	}
	kept := false // on success the connection stays open until this process is done
	defer func() {
		if !kept {
			_ = conn.Close()
		}
	}()
	uc, ok := conn.(interface {
		WriteMsgUnix(b, oob []byte, addr *net.UnixAddr) (n, oobn int, err error)
	})
	if !ok {
		return fmt.Errorf("the control connection is a %T, not a unix socket", conn)
	}
	deadline := func() { _ = conn.SetDeadline(time.Now().Add(handoverTimeout)) }
	deadline()
	fmt.Fprintf(brw, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: %s\r\nConnection: Upgrade\r\n%s: %d\r\n\r\n", handoverProto, controlHeader, controlAPI)
	if err := brw.Flush(); err != nil {
		return err
	}
	if _, err := brw.ReadByte(); err != nil { // N has read the answer
		return fmt.Errorf("wait for the successor: %w", err)
	}
	ctx, cancel := context.WithTimeout(r.Context(), handoverTimeout)
	defer cancel()
	ctrs, resume, err := h.state(ctx)
	if err != nil {
		return err
	}
	defer resume()
	st := handoverState{Version: 1, Containers: ctrs, From: versionString(), PID: os.Getpid()}
	var files []*os.File
	defer func() {
		for _, f := range files {
			_ = f.Close()
		}
	}()
	add := func(s handoverSocket, f *os.File, err error) error {
		if err != nil {
			return fmt.Errorf("hand over %s: %w", s.Kind, err)
		}
		st.Listeners, files = append(st.Listeners, s), append(files, f)
		return nil
	}
	for i, ln := range h.data {
		f, err := ln.File()
		if err := add(handoverSocket{Kind: "port", Port: h.ports[i].host}, f, err); err != nil {
			return err
		}
	}
	if ml, ok := h.metrics.(*net.TCPListener); ok {
		f, err := ml.File()
		if err := add(handoverSocket{Kind: "metrics", Addr: h.mAddr}, f, err); err != nil {
			return err
		}
	}
	if h.control != nil {
		f, err := h.control.File()
		if err := add(handoverSocket{Kind: "control"}, f, err); err != nil {
			return err
		}
	}
	body, err := json.Marshal(st)
	if err != nil {
		return err
	}
	msg := binary.BigEndian.AppendUint32(nil, uint32(len(body)))
	fds := make([]int, len(files))
	for i, f := range files {
		fds[i] = int(f.Fd())
	}
	deadline()
	// Once the successor may hold the control socket, the path is its
	// too: closing ours must not remove it, also if this process is told
	// to stop (SIGTERM) before the successor says it accepts. (After a
	// hand-over that fails, a clean exit leaves the path behind, as a
	// crash does: the next proxy replaces it.)
	c.release()
	// The descriptors ride on the first byte; the rest of the state may
	// follow in plain writes.
	if _, _, err := uc.WriteMsgUnix(msg[:1], unix.UnixRights(fds...), nil); err != nil {
		return fmt.Errorf("send the listeners: %w", err)
	}
	if _, err := conn.Write(append(msg[1:], body...)); err != nil {
		return fmt.Errorf("send the state: %w", err)
	}
	ack := make([]byte, len(handoverAck))
	if _, err := io.ReadFull(brw, ack); err != nil || string(ack) != handoverAck {
		return fmt.Errorf("the successor did not take over: %q, %v", ack, err)
	}
	if _, err := io.WriteString(conn, handoverStop); err != nil {
		return fmt.Errorf("confirm to the successor: %w", err)
	}
	c.log.Info("handed over to a new process: no new connections here; open ones may finish")
	_ = conn.SetDeadline(time.Time{})
	kept = true
	h.done(conn)
	return nil
}

// --- The new process's side.

// takeover is what a successor got from its predecessor.
type takeover struct {
	conn  *net.UnixConn
	state handoverState
	socks sockets
	gone  chan struct{} // closed when the predecessor is done (its end of conn closes)
}

// errNoPredecessor: nobody listens on the control socket: a cold start.
var errNoPredecessor = errors.New("no predecessor")

// takeOver asks the proxy on the control socket at path for its
// listeners. errNoPredecessor when none runs there; any other error means
// a plain start too, and is logged by the caller.
func takeOver(path string, cfg config) (*takeover, error) {
	c, err := net.DialTimeout("unix", path, time.Second)
	if err != nil {
		return nil, errNoPredecessor
	}
	conn := c.(*net.UnixConn)
	ok := false
	defer func() {
		if !ok {
			_ = conn.Close()
		}
	}()
	_ = conn.SetDeadline(time.Now().Add(handoverTimeout))
	fmt.Fprintf(conn, "POST /v1/handover HTTP/1.1\r\nHost: docker-proxy\r\nConnection: Upgrade\r\nUpgrade: %s\r\n%s: %s\r\nContent-Length: 0\r\n\r\n",
		handoverProto, handoverHeader, listenID(cfg.address, cfg.ports))
	// Byte by byte, so that nothing of what follows the answer is read
	// into a buffer (the descriptors come with the first byte after it).
	br := bufio.NewReaderSize(oneByteReader{conn}, 16)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return nil, fmt.Errorf("the predecessor does not answer: %w", err)
	}
	defer resp.Body.Close()
	switch {
	case resp.Header.Get(controlHeader) == "":
		return nil, fmt.Errorf("%s is not a docker-proxy control socket", path)
	case resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusUpgradeRequired:
		return nil, fmt.Errorf("the predecessor does not speak %s (an older version?)", handoverProto)
	case resp.StatusCode != http.StatusSwitchingProtocols:
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return nil, fmt.Errorf("the predecessor refused: %s %s", resp.Status, strings.TrimSpace(string(msg)))
	}
	if _, err := conn.Write([]byte{'r'}); err != nil {
		return nil, err
	}
	first := make([]byte, 4)
	oob := make([]byte, unix.CmsgSpace((len(cfg.ports)+2)*4)) // the ports, metrics and control
	n, oobn, flags, _, err := conn.ReadMsgUnix(first[:1], oob)
	if err != nil || n != 1 {
		return nil, fmt.Errorf("receive the listeners: %w", err)
	}
	fds, err := parseRights(oob[:oobn])
	if err == nil && flags&unix.MSG_CTRUNC != 0 {
		err = errors.New("the predecessor sent more listeners than this process has")
	}
	files := make([]*os.File, len(fds))
	for i, fd := range fds {
		unix.CloseOnExec(fd)
		files[i] = os.NewFile(uintptr(fd), "handed-over")
	}
	defer func() {
		for _, f := range files {
			_ = f.Close() // FileListener holds a copy
		}
	}()
	if err != nil {
		return nil, err
	}
	if _, err := io.ReadFull(conn, first[1:]); err != nil {
		return nil, fmt.Errorf("receive the state: %w", err)
	}
	size := binary.BigEndian.Uint32(first)
	if size > handoverMax {
		return nil, fmt.Errorf("the predecessor's state is %d bytes", size)
	}
	body := make([]byte, size)
	if _, err := io.ReadFull(conn, body); err != nil {
		return nil, fmt.Errorf("receive the state: %w", err)
	}
	t := &takeover{conn: conn, socks: sockets{ports: map[uint16]*net.TCPListener{}}, gone: make(chan struct{})}
	if err := json.Unmarshal(body, &t.state); err != nil {
		return nil, fmt.Errorf("the predecessor's state: %w", err)
	}
	if len(t.state.Listeners) != len(files) {
		return nil, fmt.Errorf("the predecessor sent %d descriptors for %d listeners", len(files), len(t.state.Listeners))
	}
	want := map[uint16]bool{}
	for _, p := range cfg.ports {
		want[p.host] = true
	}
	for i, s := range t.state.Listeners {
		ln, err := net.FileListener(files[i])
		if err != nil {
			t.socks.close()
			return nil, fmt.Errorf("the predecessor's %s listener: %w", s.Kind, err)
		}
		// Only what this process uses is kept: a listener it does not
		// take (a port it does not have, a second of a kind) is closed
		// here, not held unserved.
		switch l := ln.(type) {
		case *net.TCPListener:
			switch {
			case s.Kind == "metrics" && t.socks.metrics == nil:
				t.socks.metrics, t.socks.addr = l, s.Addr
			case s.Kind == "port" && want[s.Port] && t.socks.ports[s.Port] == nil:
				t.socks.ports[s.Port] = l
			default:
				_ = l.Close()
			}
		case *net.UnixListener:
			if s.Kind == "control" && t.socks.control == nil {
				t.socks.control = l
			} else {
				l.SetUnlinkOnClose(false)
				_ = l.Close()
			}
		default:
			_ = ln.Close()
		}
	}
	ok = true
	return t, nil
}

// accepting tells the predecessor that this process accepts now: it stops.
// Then t.gone is closed once the predecessor is done (or at once, if it
// did not hear).
func (t *takeover) accepting() error {
	_ = t.conn.SetDeadline(time.Now().Add(handoverTimeout))
	_, err := t.conn.Write([]byte(handoverAck))
	if err == nil {
		// An ack the predecessor no longer waited for (its step timed
		// out) is not taken: it serves on, and says so by not
		// confirming.
		got := make([]byte, len(handoverStop))
		if _, rerr := io.ReadFull(t.conn, got); rerr != nil || string(got) != handoverStop {
			err = fmt.Errorf("the predecessor did not confirm: %q, %v", got, rerr)
		}
	}
	if err != nil {
		_ = t.conn.Close()
		close(t.gone)
		return err
	}
	_ = t.conn.SetDeadline(time.Time{})
	go func() {
		defer close(t.gone)
		defer t.conn.Close()
		_, _ = io.Copy(io.Discard, t.conn) // until the predecessor's end closes
	}()
	return nil
}

// close closes what was handed over and not used.
func (s sockets) close() {
	for _, ln := range s.ports {
		_ = ln.Close()
	}
	if s.metrics != nil {
		_ = s.metrics.Close()
	}
	if s.control != nil {
		s.control.SetUnlinkOnClose(false)
		_ = s.control.Close()
	}
}

func parseRights(oob []byte) ([]int, error) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("the predecessor's descriptors: %w", err)
	}
	var fds []int
	for _, m := range msgs {
		if m.Header.Level != syscall.SOL_SOCKET || m.Header.Type != syscall.SCM_RIGHTS {
			continue
		}
		got, err := unix.ParseUnixRights(&m)
		if err != nil {
			return nil, err
		}
		fds = append(fds, got...)
	}
	return fds, nil
}

// oneByteReader reads one byte at a time.
type oneByteReader struct{ r io.Reader }

func (o oneByteReader) Read(p []byte) (int, error) {
	if len(p) > 1 {
		p = p[:1]
	}
	return o.r.Read(p)
}

// logTakeover says how this process started: from a predecessor, or not.
func logTakeover(log *slog.Logger, path string, t *takeover, err error) {
	switch {
	case t != nil:
		log.Info("took over from the running proxy", "socket", path, "pid", t.state.PID, "from", t.state.From,
			"listeners", len(t.state.Listeners), "containers", len(t.state.Containers))
	case errors.Is(err, errNoPredecessor):
	default:
		log.Warn("cannot take over from the proxy on the control socket: plain start", "socket", path, "err", err)
	}
}

// metricsListener is the -metrics_address listener: the predecessor's, if
// it had the same address, else a new one (nil: none).
func metricsListener(cfg config, handed sockets) (net.Listener, error) {
	if handed.metrics != nil {
		if handed.addr == cfg.metricsAddr {
			return handed.metrics, nil
		}
		_ = handed.metrics.Close()
	}
	if cfg.metricsAddr == "" {
		return nil, nil
	}
	return listenMetrics(cfg.metricsAddr)
}

// controlListener is the control socket: the predecessor's, else a new
// one (nil: none). The auto socket is optional: a proxy that cannot make
// it runs without.
func controlListener(cfg config, handed sockets, log *slog.Logger) (*net.UnixListener, error) {
	if handed.control != nil {
		// A listener made from a descriptor does not remove its path on
		// close; it becomes this process's to remove only once the
		// predecessor stopped accepting (see control.claim).
		return handed.control, nil
	}
	path := controlPath(cfg)
	if path == "" {
		return nil, nil
	}
	ln, err := listenControl(path)
	switch {
	case err != nil && cfg.control != controlAuto:
		return nil, err
	case err != nil:
		log.Warn("no control socket: docker-proxy wait, deploy and status cannot reach this proxy (set -control)", "err", err)
		return nil, nil
	}
	return ln, nil
}
