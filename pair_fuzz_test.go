package main

// FuzzPair drives the connection path with scripts decoded from the fuzz
// input: a client that writes chunks of random sizes, urgent bytes,
// half-closes and resets; servers that echo, act and close, half-close
// first, or reset; and backend swaps, retirements and shutdown at random
// moments. After each script it checks what the proxy promises:
//
//   - nothing is read twice: at most one server connection reads any of
//     the client's bytes, and what it read is a prefix of what the client
//     sent (urgent bytes aside);
//   - nothing is lost: when nothing closed the connection on purpose, the
//     server that served it read every byte, and an echo came back whole;
//   - nothing is stuck: once the client is gone the pair closes, and
//     after the proxy's shutdown every pair is closed;
//   - nothing leaks: goroutines and file descriptors come back to where
//     they were.
//
// Servers that reset do so before reading: a server that reads part of a
// request and then resets the connection cannot be told from one that read
// nothing (see the resend rule in pair.go and README's Guarantees).

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Server behaviours.
const (
	fzEcho      = iota // echo everything; half-close at EOF
	fzActClose         // read at least k bytes, act, send FIN, drain
	fzResetNow         // reset without reading (a closing accept queue)
	fzHalfFirst        // half-close at once, then read to EOF
	fzCloseNow         // close at once, reading nothing (net/http stopping)
	fzBehaviours
)

var fzNames = [...]string{"echo", "act-close", "reset-now", "half-close-first", "close-now"}

// fzServer is one scripted server; it records every byte its application
// read, per connection.
type fzServer struct {
	*loopServer
	kind int
	k    int
	mu   sync.Mutex
	read [][]byte // per accepted connection
}

func (s *fzServer) handle(c *net.TCPConn) {
	s.mu.Lock()
	i := len(s.read)
	s.read = append(s.read, nil)
	s.mu.Unlock()
	got := func(b []byte) {
		s.mu.Lock()
		s.read[i] = append(s.read[i], b...)
		s.mu.Unlock()
	}
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 4096)
	switch s.kind {
	case fzEcho:
		for {
			n, err := c.Read(buf)
			got(buf[:n])
			if n > 0 {
				if _, err := c.Write(buf[:n]); err != nil {
					return
				}
			}
			if err != nil {
				_ = c.CloseWrite()
				return
			}
		}
	case fzActClose:
		total := 0
		for total < s.k {
			n, err := c.Read(buf)
			got(buf[:n])
			total += n
			if err != nil {
				break
			}
		}
		_ = c.CloseWrite() // FIN, whatever is still unread
		_ = c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
		for {
			n, err := c.Read(buf)
			got(buf[:n])
			if err != nil {
				return
			}
		}
	case fzResetNow:
		_ = c.SetLinger(0)
	case fzCloseNow:
	case fzHalfFirst:
		_ = c.CloseWrite()
		for {
			n, err := c.Read(buf)
			got(buf[:n])
			if err != nil {
				return
			}
		}
	}
}

// readers returns the connections that read anything, and what.
func (s *fzServer) readers() [][]byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out [][]byte
	for _, b := range s.read {
		if len(b) > 0 {
			out = append(out, bytes.Clone(b))
		}
	}
	return out
}

// fzInput reads the fuzz input one byte at a time, then zeros.
type fzInput struct{ b []byte }

func (in *fzInput) next() int {
	if len(in.b) == 0 {
		return 0
	}
	v := in.b[0]
	in.b = in.b[1:]
	return int(v)
}

const fzUrgent = 0xff // never in the client's ordinary bytes

func FuzzPair(f *testing.F) {
	for _, seed := range []string{
		"\x02\x00\x00\x00\x00\x10\x00\x20\x03\x00\x40\x07\x00",         // echo, urgent byte mid-stream
		"\x02\x02\x00\x00\x00\x10\x04\x01\x00\x30",                     // reset-now, then swap to echo
		"\x02\x03\x00\x00\x00\x20\x01\x30\x02\x40",                     // half-close first
		"\x02\x01\x00\x00\x05\x00\x40\x04\x02\x00\x40",                 // act-close, then swap
		"\x00\x02\x00\x00\x00\x10\x04\x01",                             // replay off, reset-now
		"\x01\x00\x00\x02\x00\x00\x40\x00\x40\x00\x40",                 // tiny replay buffer, overflow
		"\x02\x00\x00\x00\x00\x10\x05\x00\x10",                         // retire the serving backend
		"\x02\x00\x00\x00\x00\x10\x07\x02",                             // shutdown mid-stream
		"\x02\x02\x02\x02\x00\x10\x06",                                 // every server resets
		"\x02\x00\x01\x03\x09\x08\x03\x03\x08\x04\x02\x00\x10\x07\x01", // client reset
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 64 {
			data = data[:64]
		}
		fdsBefore, goBefore := fzFDs(), runtime.NumGoroutine()
		fuzzPairOnce(t, &fzInput{b: data})
		deadline := time.Now().Add(5 * time.Second)
		for runtime.NumGoroutine() > goBefore || (fdsBefore >= 0 && fzFDs() > fdsBefore) {
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				t.Fatalf("leak: %d goroutines (%d before), %d descriptors (%d before)\n%s",
					runtime.NumGoroutine(), goBefore, fzFDs(), fdsBefore, buf[:runtime.Stack(buf, true)])
			}
			// Go's splice keeps pipes in a pool that a GC empties:
			// they are not the proxy's to leak.
			runtime.GC()
			time.Sleep(time.Millisecond) // polling, bounded by the deadline
		}
	})
}

// fzFDs counts open file descriptors, or -1 where /proc is not there.
func fzFDs() int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return -1
	}
	return len(ents)
}

func fuzzPairOnce(t *testing.T, in *fzInput) {
	replay := [...]int{0, 7, defaultReplayBytes}[in.next()%3]
	kinds := [3]int{in.next() % fzBehaviours, in.next() % fzBehaviours, in.next() % fzBehaviours}
	k := in.next()%96 + 1
	servers := make([]*fzServer, len(kinds))
	var script strings.Builder
	for i, kind := range kinds {
		s := &fzServer{kind: kind, k: k}
		s.loopServer = startLoopServer(t, s.handle)
		servers[i] = s
		fmt.Fprintf(&script, "server %d %s; ", i, fzNames[kind])
	}
	backends := make([]*backend, len(servers))
	for i, s := range servers {
		backends[i] = s.backend(fmt.Sprint("s", i))
	}
	rig := newFuzzRig(t, backends[0], replay)
	fmt.Fprintf(&script, "replay %d; ", replay)

	c, err := net.DialTimeout("tcp", rig.addr, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	client := c.(*net.TCPConn)
	_ = client.SetDeadline(time.Now().Add(5 * time.Second))
	var sent, echoed []byte
	disturbed, ended, urgent := false, false, false
	next := byte(0)
	readSome := func(d time.Duration) {
		_ = client.SetReadDeadline(time.Now().Add(d))
		buf := make([]byte, 4096)
		for {
			n, err := client.Read(buf)
			echoed = append(echoed, buf[:n]...)
			if err != nil {
				return
			}
		}
	}
	for op := 0; op < 16 && !ended; op++ {
		switch code := in.next(); code % 8 {
		case 0, 1, 2:
			n := in.next()%64 + 1
			chunk := make([]byte, n)
			for i := range chunk {
				chunk[i] = next
				next = (next + 1) % fzUrgent
			}
			if _, err := client.Write(chunk); err != nil {
				disturbed = true // the connection is gone; say so and stop
				ended = true
				break
			}
			sent = append(sent, chunk...)
			urgent = false
			fmt.Fprintf(&script, "write %d; ", n)
		case 3:
			if !urgent { // two unread urgent bytes would turn the first into data
				_ = sendUrgentRaw(client, fzUrgent)
				urgent = true
				script.WriteString("urgent; ")
			}
		case 4:
			i := in.next() % 4
			if i == 3 {
				rig.route.store(nil)
			} else {
				rig.route.store(backends[i])
			}
			fmt.Fprintf(&script, "route %d; ", i)
		case 5:
			if b := rig.route.load(); b != nil {
				b.closeAll()
				disturbed = true
				fmt.Fprintf(&script, "retire %s; ", b.id)
			}
		case 6:
			readSome(2 * time.Millisecond)
			script.WriteString("read; ")
		case 7:
			ended = true
			switch in.next() % 3 {
			case 0:
				_ = client.CloseWrite()
				script.WriteString("client FIN; ")
			case 1:
				_ = client.SetLinger(0)
				_ = client.Close()
				disturbed = true
				script.WriteString("client reset; ")
			case 2:
				rig.p.shutdown()
				disturbed = true
				script.WriteString("shutdown; ")
			}
		}
	}
	if !ended {
		_ = client.CloseWrite()
		script.WriteString("client FIN; ")
	}
	readSome(3 * time.Second)
	_ = client.Close()

	// Nothing stuck: with the client gone, every pair closes (a hold or a
	// move ends within -hold_timeout).
	gone := time.Now().Add(5 * time.Second)
	for rig.p.reg.count() > 0 {
		if time.Now().After(gone) {
			t.Fatalf("a pair outlived its client by 5s\nscript: %s", script.String())
		}
		time.Sleep(time.Millisecond) // polling, bounded by gone
	}
	rig.stop() // serve has returned: no Add races the Wait below
	if !waitGroupFor(&rig.p.open, 5*time.Second) {
		t.Fatalf("a pair's goroutines still run after it closed\nscript: %s", script.String())
	}
	for _, s := range servers {
		// Let every handler read what reached it before its
		// connection is closed under it; the proxy has closed its side.
		_ = s.ln.Close()
		waitGroupFor(&s.wg, 5*time.Second)
		s.close()
	}

	// Nothing read twice.
	var readers [][]byte
	var readerKinds []int
	for _, s := range servers {
		for _, r := range s.readers() {
			readers = append(readers, r)
			readerKinds = append(readerKinds, s.kind)
		}
	}
	if len(readers) > 1 {
		t.Fatalf("%d server connections read the client's bytes; want at most 1\nscript: %s", len(readers), script.String())
	}
	var got []byte
	if len(readers) == 1 {
		got = bytes.ReplaceAll(readers[0], []byte{fzUrgent}, nil)
		if !bytes.HasPrefix(sent, got) {
			t.Fatalf("the server read %d bytes that are not a prefix of the %d sent\nscript: %s", len(got), len(sent), script.String())
		}
	}
	// Nothing lost, where nothing closed the connection on purpose.
	if disturbed {
		return
	}
	switch {
	case len(sent) == 0:
	case len(readers) == 0:
		// Every container reset it, or none served: the client saw its
		// connection end with no answer (it read nothing).
		if len(echoed) > 0 {
			t.Fatalf("the client read %d bytes that no server sent\nscript: %s", len(echoed), script.String())
		}
	case readerKinds[0] == fzEcho || readerKinds[0] == fzHalfFirst:
		if !bytes.Equal(got, sent) {
			t.Fatalf("the %s server read %d of %d bytes\nscript: %s", fzNames[readerKinds[0]], len(got), len(sent), script.String())
		}
		if readerKinds[0] == fzEcho && !bytes.Equal(bytes.ReplaceAll(echoed, []byte{fzUrgent}, nil), got) {
			t.Fatalf("echo: %d bytes back of %d\nscript: %s", len(echoed), len(got), script.String())
		}
	}
}

// fuzzRig is a proxy on one loopback listener, stopped by the fuzz body
// itself so that leaks can be counted.
type fuzzRig struct {
	*proxyRig
	stop func()
}

func newFuzzRig(t *testing.T, b *backend, replay int) *fuzzRig {
	route := newRouter()
	route.store(b)
	ln := listenLoopback(t)
	p := newProxy(route, []portMap{{host: 1, container: 1}}, 100*time.Millisecond, 0, slog.New(slog.DiscardHandler))
	p.replayMax = replay
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- p.serve(ctx, ln, 0) }()
	return &fuzzRig{
		proxyRig: &proxyRig{route: route, p: p, ln: ln, addr: ln.Addr().String()},
		stop: func() {
			cancel()
			if err := <-errc; err != nil {
				t.Errorf("serve: %v", err)
			}
			p.shutdown()
		},
	}
}

// sendUrgentRaw sends one urgent byte, reporting errors instead of
// failing (the connection may be gone).
func sendUrgentRaw(c *net.TCPConn, b byte) error {
	raw, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := raw.Write(func(fd uintptr) bool {
		serr = unix.Sendto(int(fd), []byte{b}, unix.MSG_OOB, nil)
		return true
	}); err != nil {
		return err
	}
	return serr
}
