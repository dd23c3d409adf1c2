package main

// -proxy_protocol against a real container: the test server parses the
// header with go-proxyproto and answers the client address it names.

import (
	"bufio"
	"fmt"
	"net"
	"testing"
	"time"
)

// TestDockerProxyProtocol: with -proxy_protocol v1 and v2, a client that
// connects through the proxy from 127.0.0.1 is told its own address by the
// container, and its bytes follow the header unchanged.
func TestDockerProxyProtocol(t *testing.T) {
	for _, v := range []int{1, 2} {
		t.Run(fmt.Sprintf("v%d", v), func(t *testing.T) {
			tag := newTag(t, fmt.Sprintf("v%d", v))
			svc := startCtr(t, tag, "-proxyproto", ":7000")
			cfg := testConfig(tag, portMap{7000, 7000})
			cfg.statusURL = statusURL{port: 80, uri: "/status"}
			cfg.hold = 5 * time.Second
			cfg.proxyProtocol = v
			p := startProxy(t, cfg)
			p.logs.waitLog(t, 10*time.Second, "serving", "container", svc.short())

			for i := range 3 { // a new connection, a new header each time
				d := net.Dialer{Timeout: 5 * time.Second}
				c, err := d.Dial("tcp", p.addrs[0])
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				r := bufio.NewReader(c)
				line, err := r.ReadString('\n')
				if want := c.LocalAddr().String() + "\n"; err != nil || line != want {
					t.Fatalf("connection %d: the container read %q, %v; want the client's address %q", i, line, err, want)
				}
				msg := fmt.Sprintf("hello %d\n", i)
				if _, err := c.Write([]byte(msg)); err != nil {
					t.Fatal(err)
				}
				if got, err := r.ReadString('\n'); err != nil || got != msg {
					t.Fatalf("echo: got %q, %v; want %q", got, err, msg)
				}
				_ = c.Close()
			}
		})
	}
}
