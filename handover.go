package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
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
	handoverRefuse  = "refusing\n" // O's answer to a late ack: it serves on (as long as handoverStop)
	handoverMax     = 16 << 20     // the state, at most
)

// listenID names what a proxy listens on, for a successor to match:
// the address and the sorted host ports.
func listenID(address string, ports []portMap) string {
	return address + " " + hostPortList(ports)
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
	end := make(chan struct{})
	defer close(end)
	c.handMu.Lock()
	c.handEnd = end
	c.handMu.Unlock()
	err := c.sendSockets(w, r, h)
	if err != nil {
		c.handing.Store(false)
		c.log.Warn("hand-over failed: serving on", "err", err)
	}
}

// waitHandover waits, up to timeout or until abort is closed, for a
// hand-over under way to end: a process told to stop after it sent its
// listeners must still confirm the successor's ack before it exits, or the
// successor, unconfirmed, stops too and nobody accepts.
func (c *control) waitHandover(timeout time.Duration, abort <-chan struct{}) {
	c.handMu.Lock()
	end := c.handEnd
	c.handMu.Unlock()
	if end == nil {
		return
	}
	select {
	case <-end:
	case <-time.After(timeout):
	case <-abort:
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
		// This one serves on: a successor whose ack comes now must stop.
		_ = conn.SetWriteDeadline(time.Now().Add(time.Second))
		_, _ = io.WriteString(conn, handoverRefuse)
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
