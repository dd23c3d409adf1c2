// Testserver is the service that docker-proxy's tests and demo deploy. It
// runs FROM scratch in a container and reports which container answered,
// so a test can tell old from new.
//
//	-http ADDR       HTTP: / answers the hostname (the container's short id),
//	                 /version adds $VERSION, /status answers 200 once ready,
//	                 /slow?ms=N answers after N ms
//	-echo ADDR       raw TCP echo; half-closes its side after the client's EOF
//	-echo_after D    open the -echo listener only D after start
//	-ready_after D   /status answers 503 until D after start
//	-fail_status     /status always answers 500
//	-unready_after D /status answers 503 again D after it became ready
//	-exit_after D    exit(3) D after becoming ready (a crash after a deploy;
//	                 requests in flight finish first)
//	-check URL       client mode for a HEALTHCHECK: exit 0 if URL answers 200
//	-proxyproto ADDR raw TCP: reads a PROXY protocol header (v1 or v2), writes
//	                 back the source address it names and a newline, then
//	                 echoes like -echo
//	-plain_shutdown  stop with net/http's Server.Shutdown, which drops a
//	                 request it has read on a connection accepted as it
//	                 began to stop (see stopHTTP)
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/pires/go-proxyproto"
)

func main() {
	var (
		httpAddr     = flag.String("http", ":80", "HTTP listen address (empty: none)")
		echoAddr     = flag.String("echo", "", "TCP echo listen address (empty: none)")
		echoAfter    = flag.Duration("echo_after", 0, "open the -echo listener this long after start")
		readyAfter   = flag.Duration("ready_after", 0, "answer /status with 503 until this long after start")
		failStatus   = flag.Bool("fail_status", false, "answer /status with 500 forever")
		unreadyAfter = flag.Duration("unready_after", 0, "answer /status with 503 again this long after becoming ready")
		exitAfter    = flag.Duration("exit_after", 0, "exit this long after becoming ready")
		check        = flag.String("check", "", "GET this URL and exit 0 on 200, 1 otherwise")
		proxyAddr    = flag.String("proxyproto", "", "listen address for PROXY protocol connections: answer the source address, then echo (empty: none)")
		plainStop    = flag.Bool("plain_shutdown", false, "stop with net/http's Shutdown rather than answering every request read")
	)
	flag.Parse()
	if *check != "" {
		os.Exit(checkURL(*check))
	}
	host, _ := os.Hostname()
	start := time.Now()
	readyAt := start.Add(*readyAfter)
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, host)
	})
	mux.HandleFunc("/version", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "version %s container %s\n", os.Getenv("VERSION"), host)
	})
	mux.HandleFunc("/status", func(w http.ResponseWriter, r *http.Request) {
		now := time.Now()
		switch {
		case *failStatus:
			http.Error(w, "failing on purpose", http.StatusInternalServerError)
		case now.Before(readyAt):
			http.Error(w, "starting", http.StatusServiceUnavailable)
		case *unreadyAfter > 0 && now.After(readyAt.Add(*unreadyAfter)):
			http.Error(w, "unready on purpose", http.StatusServiceUnavailable)
		default:
			fmt.Fprintln(w, "ok", host)
		}
	})
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		ms, _ := strconv.Atoi(r.URL.Query().Get("ms"))
		select {
		case <-time.After(time.Duration(ms) * time.Millisecond):
		case <-r.Context().Done():
			return
		}
		fmt.Fprintln(w, host)
	})
	srv := &http.Server{Addr: *httpAddr, Handler: mux}
	conns := trackConns(srv)
	var ln net.Listener
	if *httpAddr != "" {
		var err error
		if ln, err = net.Listen("tcp", *httpAddr); err != nil {
			log.Fatal(err)
		}
		go func() { _ = srv.Serve(ln) }()
	}
	stop := func(timeout time.Duration) {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		if *plainStop || ln == nil {
			_ = srv.Shutdown(ctx)
			return
		}
		stopHTTP(ctx, srv, ln, conns)
	}
	if *exitAfter > 0 {
		// A crash, but one that lets requests in flight finish, so that a
		// test can count every failure as the proxy's.
		time.AfterFunc(*readyAfter+*exitAfter, func() {
			log.Printf("exiting on purpose")
			stop(time.Second)
			os.Exit(3)
		})
	}
	if *echoAddr != "" {
		openEcho := func() {
			ln, err := net.Listen("tcp", *echoAddr)
			if err != nil {
				log.Fatal(err)
			}
			go serveEcho(ln)
		}
		if *echoAfter > 0 {
			time.AfterFunc(*echoAfter, openEcho)
		} else {
			openEcho()
		}
	}
	if *proxyAddr != "" {
		ln, err := net.Listen("tcp", *proxyAddr)
		if err != nil {
			log.Fatal(err)
		}
		go serveProxyProto(ln)
	}

	// As PID 1 in a container a signal without a handler is ignored, so
	// handle SIGTERM to let docker stop end the server at once.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, os.Interrupt)
	<-sig
	stop(5 * time.Second)
}

// conns follows the HTTP server's connections and their states.
type conns struct {
	mu sync.Mutex
	m  map[net.Conn]http.ConnState
}

func trackConns(srv *http.Server) *conns {
	cs := &conns{m: map[net.Conn]http.ConnState{}}
	srv.ConnState = func(c net.Conn, st http.ConnState) {
		cs.mu.Lock()
		defer cs.mu.Unlock()
		if st == http.StateClosed || st == http.StateHijacked {
			delete(cs.m, c)
		} else {
			cs.m[c] = st
		}
	}
	return cs
}

// closeIdle closes the idle keep-alive connections and reports how many
// are still open.
func (cs *conns) closeIdle() int {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	for c, st := range cs.m {
		if st == http.StateIdle {
			_ = c.Close()
		}
	}
	return len(cs.m)
}

// stopHTTP stops the server without dropping a request it has read, as a
// careful service does. Server.Shutdown closes the listener, then reads
// the request of a connection accepted just before and returns without
// answering it (net/http's conn.serve checks shuttingDown after
// readRequest): the client sees FIN and no answer, which no proxy may take
// for an unread request. Here the listener closes (the kernel resets what
// is still queued, unread), keep-alive goes off so every connection
// closes after its next answer, and idle ones are closed, until none is
// left or ctx ends.
func stopHTTP(ctx context.Context, srv *http.Server, ln net.Listener, cs *conns) {
	_ = ln.Close()
	srv.SetKeepAlivesEnabled(false)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for cs.closeIdle() > 0 {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

func serveEcho(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			log.Fatal(err)
		}
		go func() {
			defer c.Close()
			_, _ = io.Copy(c, c)
			_ = c.(*net.TCPConn).CloseWrite()
		}()
	}
}

// serveProxyProto answers each connection with the source address of its
// PROXY protocol header and a newline, then echoes the rest; a connection
// without a valid header gets "error: ..." and is closed.
func serveProxyProto(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			log.Fatal(err)
		}
		go func() {
			defer c.Close()
			_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
			r := bufio.NewReader(c)
			h, err := proxyproto.Read(r)
			if err != nil {
				fmt.Fprintf(c, "error: %v\n", err)
				return
			}
			_ = c.SetReadDeadline(time.Time{})
			if _, err := fmt.Fprintf(c, "%s\n", h.SourceAddr); err != nil {
				return
			}
			_, _ = io.Copy(c, r)
			_ = c.(*net.TCPConn).CloseWrite()
		}()
	}
}

func checkURL(url string) int {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 1
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 1
	}
	return 0
}
