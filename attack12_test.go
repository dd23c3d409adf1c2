package main

// Attacks on the hand-over (handover.go) from the successor's side: a
// predecessor, played by the test, that sends more descriptors than
// asked, descriptors that are no listeners, listeners for ports the
// successor does not have, a bogus length or bogus state. The successor
// must fail cleanly or ignore what it does not use, and never keep a
// descriptor it does not use.

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// openFDs counts this process's open descriptors.
func openFDs(t testing.TB) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc/self/fd")
	}
	return len(ents)
}

// fakePredecessor serves one hand-over on a control socket: it answers
// 101, waits for the successor's byte, then sends fds with the first byte
// of msg and the rest of msg after. It returns the socket's path and a
// channel with what the successor wrote after that (its ack), once it
// closes.
func fakePredecessor(t *testing.T, fds []int, msg []byte) (string, <-chan string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "ctl.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	return path, fakePredecessorOn(ln, func() ([]int, []byte) { return fds, msg }, nil)
}

// fakePredecessorOn is fakePredecessor on ln: send, called once the
// successor has read the answer, gives what to send; after, if not nil,
// is called once the ack (or less, up to the end) has been read, before
// the connection closes.
func fakePredecessorOn(ln *net.UnixListener, send func() ([]int, []byte), after func(ack string)) <-chan string {
	return fakePredecessorAnswering(ln, send, after, handoverStop)
}

// fakePredecessorAnswering is fakePredecessorOn that answers a good ack
// with answer: handoverStop (it stops), handoverRefuse (its step timed
// out: it serves on), or "" (nothing: it died).
func fakePredecessorAnswering(ln *net.UnixListener, send func() ([]int, []byte), after func(ack string), answer string) <-chan string {
	acks := make(chan string, 1)
	go func() {
		defer close(acks)
		c, err := ln.AcceptUnix()
		if err != nil {
			return
		}
		defer c.Close()
		br := bufio.NewReader(c)
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		_ = req.Body.Close()
		if _, err := c.Write([]byte("HTTP/1.1 101 Switching Protocols\r\nUpgrade: " + handoverProto + "\r\nConnection: Upgrade\r\n" + controlHeader + ": 1\r\n\r\n")); err != nil {
			return
		}
		if _, err := br.ReadByte(); err != nil {
			return
		}
		fds, msg := send()
		if _, _, err := c.WriteMsgUnix(msg[:1], unix.UnixRights(fds...), nil); err != nil {
			return
		}
		if _, err := c.Write(msg[1:]); err != nil {
			return
		}
		ack := make([]byte, len(handoverAck))
		n, _ := io.ReadFull(br, ack)
		if answer != "" && string(ack[:n]) == handoverAck {
			_, _ = c.Write([]byte(answer))
		}
		if after != nil {
			after(string(ack[:n]))
		}
		_ = c.Close() // before the test counts descriptors
		acks <- string(ack[:n])
	}()
	return acks
}

// stateMsg is the length-prefixed state.
func stateMsg(t testing.TB, st handoverState) []byte {
	t.Helper()
	body, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	return append(binary.BigEndian.AppendUint32(nil, uint32(len(body))), body...)
}

// tcpListenerFD opens a TCP listener on 127.0.0.1 and returns it and a
// duplicate descriptor of it (closed when the test ends).
func tcpListenerFD(t *testing.T) (*net.TCPListener, int) {
	t.Helper()
	ln, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	f, err := ln.File()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close(); _ = f.Close() })
	return ln, int(f.Fd())
}

// TestAttackTakeOverBogusPredecessor: each bogus hand-over fails with an
// error, or is taken without what the successor does not use; either way
// the successor holds no descriptor afterwards that it did not return.
func TestAttackTakeOverBogusPredecessor(t *testing.T) {
	cfg := config{address: "127.0.0.1", ports: []portMap{{8080, 80}}}
	for _, tc := range []struct {
		name string
		msg  func(t *testing.T, fds []int) ([]int, []byte)
		err  string // "": the take-over succeeds
	}{
		{"more descriptors than room", func(t *testing.T, fds []int) ([]int, []byte) {
			var many []int
			for range 8 {
				_, fd := tcpListenerFD(t)
				many = append(many, fd)
			}
			return many, stateMsg(t, handoverState{Version: 1})
		}, "more listeners"},
		{"fewer listeners than descriptors", func(t *testing.T, fds []int) ([]int, []byte) {
			return fds, stateMsg(t, handoverState{Version: 1})
		}, "descriptors for 0 listeners"},
		{"bad json", func(t *testing.T, fds []int) ([]int, []byte) {
			return fds, append(binary.BigEndian.AppendUint32(nil, 3), "{x}"...)
		}, "state"},
		{"huge length", func(t *testing.T, fds []int) ([]int, []byte) {
			return fds, binary.BigEndian.AppendUint32(nil, 1<<31)
		}, "bytes"},
		{"not a listener", func(t *testing.T, fds []int) ([]int, []byte) {
			r, w, err := os.Pipe()
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = r.Close(); _ = w.Close() })
			return []int{fds[0], int(r.Fd())}, stateMsg(t, handoverState{Version: 1, Listeners: []handoverSocket{{Kind: "port", Port: 8080}, {Kind: "port", Port: 8081}}})
		}, "listener"},
		{"a port this process does not have", func(t *testing.T, fds []int) ([]int, []byte) {
			_, extra := tcpListenerFD(t)
			return []int{fds[0], extra}, stateMsg(t, handoverState{Version: 1, Listeners: []handoverSocket{{Kind: "port", Port: 8080}, {Kind: "port", Port: 9999}}})
		}, ""},
		{"two control sockets", func(t *testing.T, fds []int) ([]int, []byte) {
			var out []int
			for i := range 2 {
				ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(t.TempDir(), "c"+string(rune('0'+i))), Net: "unix"})
				if err != nil {
					t.Fatal(err)
				}
				f, err := ln.File()
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { _ = ln.Close(); _ = f.Close() })
				out = append(out, int(f.Fd()))
			}
			return append([]int{fds[0]}, out...), stateMsg(t, handoverState{Version: 1, Listeners: []handoverSocket{{Kind: "port", Port: 8080}, {Kind: "control"}, {Kind: "control"}}})
		}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, fd := tcpListenerFD(t)
			fds, msg := tc.msg(t, []int{fd})
			path, acks := fakePredecessor(t, fds, msg)
			before := openFDs(t)
			tk, err := takeOver(path, cfg)
			if tc.err != "" {
				if tk != nil || err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("takeOver: %v, %v; want an error with %q", tk, err, tc.err)
				}
			} else {
				if err != nil {
					t.Fatalf("takeOver: %v", err)
				}
				// What run does with it: take the ports it has, the
				// control socket, and close the rest.
				used := 0
				if tk.socks.ports[8080] != nil {
					used++
				}
				if tk.socks.control != nil {
					used++
				}
				_ = tk.accepting()
				<-acks
				<-tk.gone // the predecessor closed: so has the successor's end
				// (Fewer is other tests' connections closing meanwhile;
				// a leak is more.)
				if got := openFDs(t) - before; got > used {
					t.Errorf("after the take-over the successor holds %d more descriptors; want %d (what it uses)", got, used)
				}
				tk.socks.close()
				return
			}
			<-acks
			if got := openFDs(t); got > before {
				t.Errorf("after a failed take-over the successor holds %d descriptors; want %d as before", got, before)
			}
		})
	}
}
