package main

// -proxy_protocol on loopback: each backend connection starts with a PROXY
// protocol header naming the client, and a connection replayed to another
// server (see pair.go) starts with the header again.

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/pires/go-proxyproto"
)

// ppHeaders receives what a PROXY protocol server read from each
// connection.
type ppHeaders chan *proxyproto.Header

// ppEcho reads the PROXY protocol header, answers "<source address>\n" and
// echoes the rest. A connection without a valid header is answered
// "error: ..." and closed.
func ppEcho(got ppHeaders) func(c *net.TCPConn) {
	return func(c *net.TCPConn) {
		r := bufio.NewReader(c)
		h, err := proxyproto.Read(r)
		if err != nil {
			_, _ = fmt.Fprintf(c, "error: %v\n", err)
			return
		}
		got <- h
		if _, err := fmt.Fprintf(c, "%s\n", h.SourceAddr); err != nil {
			return
		}
		_, _ = io.Copy(c, r)
		_ = c.CloseWrite()
	}
}

// ppReadHeaderThenReset reads the header, then resets the connection
// without answering.
func ppReadHeaderThenReset(got ppHeaders) func(c *net.TCPConn) {
	return func(c *net.TCPConn) {
		h, err := proxyproto.Read(bufio.NewReader(c))
		if err != nil {
			return
		}
		got <- h
		_ = c.SetLinger(0)
	}
}

func withProxyProtocol(v int) func(*proxy) {
	return func(p *proxy) { p.proxyProtocol = v }
}

// ppExpectHeader takes the next header a server read and checks that it
// is of version v and names the client c (and the proxy's address c dialed).
func ppExpectHeader(t *testing.T, got ppHeaders, v int, c net.Conn) {
	t.Helper()
	select {
	case h := <-got:
		if h.Version != byte(v) {
			t.Errorf("header version %d; want %d", h.Version, v)
		}
		if h.SourceAddr.String() != c.LocalAddr().String() {
			t.Errorf("header source %s; want the client's %s", h.SourceAddr, c.LocalAddr())
		}
		if h.DestinationAddr.String() != c.RemoteAddr().String() {
			t.Errorf("header destination %s; want the proxy's %s", h.DestinationAddr, c.RemoteAddr())
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no PROXY protocol header within 5s")
	}
}

// TestProxyProtocolHeader: the backend reads a v1 or v2 header naming the
// client before the client's bytes, which follow unchanged both ways.
func TestProxyProtocolHeader(t *testing.T) {
	for _, v := range []int{1, 2} {
		t.Run(fmt.Sprintf("v%d", v), func(t *testing.T) {
			got := make(ppHeaders, 4)
			srv := startLoopServer(t, ppEcho(got))
			rig := startProxyRig(t, srv.backend("pp"), 0, 0, withProxyProtocol(v))
			c := dialTCP(t, rig.addr)
			r := bufio.NewReader(c)
			line, err := r.ReadString('\n')
			if want := c.LocalAddr().String() + "\n"; err != nil || line != want {
				t.Fatalf("got %q, %v; want %q", line, err, want)
			}
			ppExpectHeader(t, got, v, c)
			for _, msg := range []string{"hello", "again"} {
				if got, err := lineRound(c, r, msg); err != nil || got != msg {
					t.Fatalf("echo: got %q, %v; want %q", got, err, msg)
				}
			}
			// Half-close: the echo ends and the reply is whole.
			if err := c.CloseWrite(); err != nil {
				t.Fatal(err)
			}
			if rest, err := io.ReadAll(r); err != nil || len(rest) != 0 {
				t.Fatalf("after EOF: got %q, %v; want EOF", rest, err)
			}
		})
	}
}

// TestProxyProtocolOff: without -proxy_protocol the backend gets the
// client's bytes only.
func TestProxyProtocolOff(t *testing.T) {
	got := make(ppHeaders, 1)
	srv := startLoopServer(t, ppEcho(got))
	rig := startProxyRig(t, srv.backend("pp"), 0, 0)
	c := dialTCP(t, rig.addr)
	if _, err := io.WriteString(c, "GET / HTTP/1.0\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || len(line) < 7 || line[:7] != "error: " {
		t.Fatalf("got %q, %v; want the server to find no header", line, err)
	}
}

// TestProxyProtocolReplay: a connection the first server reset unanswered
// is sent to the next one with a header of its own, then the client's
// bytes again.
func TestProxyProtocolReplay(t *testing.T) {
	for _, v := range []int{1, 2} {
		t.Run(fmt.Sprintf("v%d", v), func(t *testing.T) {
			badGot, goodGot := make(ppHeaders, 8), make(ppHeaders, 8)
			bad := startLoopServer(t, ppReadHeaderThenReset(badGot))
			good := startLoopServer(t, ppEcho(goodGot))
			rig := startProxyRig(t, bad.backend("bad"), 2*time.Second, 0, withProxyProtocol(v))
			c := dialTCP(t, rig.addr)
			if _, err := io.WriteString(c, "hello\n"); err != nil {
				t.Fatal(err)
			}
			bad.waitAccepted(t)
			rig.route.store(good.backend("good"))
			ppExpectHeader(t, badGot, v, c)

			r := bufio.NewReader(c)
			_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
			line, err := r.ReadString('\n')
			if want := c.LocalAddr().String() + "\n"; err != nil || line != want {
				t.Fatalf("got %q, %v; want the second server's %q", line, err, want)
			}
			ppExpectHeader(t, goodGot, v, c)
			// The replayed bytes follow the second header, once.
			line, err = r.ReadString('\n')
			if err != nil || line != "hello\n" {
				t.Fatalf("got %q, %v; want the replayed %q", line, err, "hello\n")
			}
			if got, err := lineRound(c, r, "again"); err != nil || got != "again" {
				t.Fatalf("got %q, %v; want %q", got, err, "again")
			}
		})
	}
}
