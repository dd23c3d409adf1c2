package main

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The new process's side of a hand-over (see handover.go).

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

// Outcomes of accepting besides success.
var (
	errAckRefused    = errors.New("the predecessor refused the ack: it serves on")
	errAckUnanswered = errors.New("the predecessor did not answer the ack (gone?)")
)

// accepting tells the predecessor that this process accepts now: it stops.
// Then t.gone is closed once the predecessor is done (or at once, if it
// did not hear).
func (t *takeover) accepting() error {
	_ = t.conn.SetDeadline(time.Now().Add(handoverTimeout))
	_, err := t.conn.Write([]byte(handoverAck))
	if err == nil {
		// An ack the predecessor no longer waited for (its step timed
		// out) is refused: it serves on, and this one must stop. No
		// answer at all is a predecessor that died meanwhile: this one
		// serves on.
		got := make([]byte, len(handoverStop))
		_, rerr := io.ReadFull(t.conn, got)
		switch {
		case rerr == nil && string(got) == handoverRefuse:
			err = errAckRefused
		case rerr != nil || string(got) != handoverStop:
			err = fmt.Errorf("%w: %q, %v", errAckUnanswered, got, rerr)
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
