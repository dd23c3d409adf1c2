package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

const idleWorkers = 32

// measureIdle opens thousands of idle connections through each target,
// each proxy freshly restarted, and records what each one costs: the proxy's RSS growth and descriptors,
// and the growth of the kernel's memory (system-wide, so the direct
// target's figure, which is the client and server sockets alone, is the
// baseline that the table subtracts).
func (b *bench) measureIdle(ctx context.Context) error {
	for rep := range b.p.reps {
		for _, t := range rotate(b.targets, rep) {
			if t.proc != nil {
				if err := b.restart(ctx, t); err != nil {
					return err
				}
			}
			r, err := runIdle(ctx, t, b.p.idleConns, b.p.idleSettle, b.fdLimit)
			if err != nil {
				return fmt.Errorf("%s: %w", t.name, err)
			}
			b.res.add("idle-n", t.name, float64(r.n))
			b.res.add("kern-kib", t.name, r.kernKiB)
			if t.proc != nil {
				b.res.add("rss-kib", t.name, r.rssKiB)
				b.res.add("fds", t.name, r.fds)
				b.res.add("idle-cap", t.name, r.capacity)
			}
		}
	}
	return nil
}

type idleResult struct {
	n                    int     // connections held
	rssKiB, kernKiB, fds float64 // per connection
	capacity             float64 // idle connections under the fd limit
}

// runIdle measures one target with n idle connections, fewer if the
// proxy's descriptors per connection would not fit under limit: a first
// batch tells how many it takes.
func runIdle(ctx context.Context, t *target, n int, settle time.Duration, limit uint64) (idleResult, error) {
	pid := t.pid()
	// Let the previous target's teardown finish before the baseline.
	if err := sleepCtx(ctx, settle/2); err != nil {
		return idleResult{}, err
	}
	rss0, fd0, k0 := rssKiB(pid), fdCount(pid), kernelKiB()
	var conns []net.Conn
	defer func() { teardown(conns) }()

	probe := min(100, n)
	var err error
	if conns, err = openIdle(ctx, t.echo, probe, conns); err != nil {
		return idleResult{}, err
	}
	if pid != 0 {
		if perConn := float64(fdCount(pid)-fd0) / float64(probe); perConn > 0 {
			if fit := probe + int((float64(limit)-float64(fdCount(pid))-200)/perConn); fit < n {
				n = fit
			}
		}
	}
	if conns, err = openIdle(ctx, t.echo, n-probe, conns); err != nil {
		return idleResult{}, err
	}
	if err := sleepCtx(ctx, settle); err != nil {
		return idleResult{}, err
	}
	rss1, fd1, k1 := rssKiB(pid), fdCount(pid), kernelKiB()
	if pid != 0 && (rss1 == 0 || t.proc.exited()) {
		return idleResult{}, fmt.Errorf("the proxy exited:\n%s", t.proc.logTail())
	}
	r := idleResult{n: n,
		rssKiB: (rss1 - rss0) / float64(n), kernKiB: (k1 - k0) / float64(n), fds: float64(fd1-fd0) / float64(n)}
	if r.fds > 0 {
		r.capacity = (float64(limit) - float64(fd0)) / r.fds
	}
	return r, nil
}

// openIdle opens k connections with one request/response each, so that
// every proxy has accepted, dialed and forwarded them, and appends them to
// conns.
func openIdle(ctx context.Context, a string, k int, conns []net.Conn) ([]net.Conn, error) {
	var (
		mu      sync.Mutex
		next    atomic.Int64
		wg      sync.WaitGroup
		openErr error
	)
	for range idleWorkers {
		wg.Go(func() {
			var msg [msgSize]byte
			msg[0] = 'e'
			for next.Add(1) <= int64(k) && ctx.Err() == nil {
				c, err := net.DialTimeout("tcp", a, 5*time.Second)
				if err == nil {
					_ = c.SetDeadline(time.Now().Add(5 * time.Second))
					if _, err = c.Write(msg[:]); err == nil {
						_, err = io.ReadFull(c, msg[:])
					}
					_ = c.SetDeadline(time.Time{})
				}
				mu.Lock()
				if c != nil {
					conns = append(conns, c)
				}
				if err != nil && openErr == nil {
					openErr = fmt.Errorf("open idle connection %d: %w", len(conns), err)
				}
				mu.Unlock()
				if err != nil {
					return
				}
			}
		})
	}
	wg.Wait()
	if openErr == nil {
		openErr = ctx.Err()
	}
	return conns, openErr
}

// teardown closes the idle connections, each by asking the backend to
// close first (no TIME_WAIT on the host's ports).
func teardown(conns []net.Conn) {
	var next atomic.Int64
	var wg sync.WaitGroup
	for range idleWorkers {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= len(conns) {
					return
				}
				c := conns[i]
				_ = c.SetDeadline(time.Now().Add(5 * time.Second))
				_ = quit(c)
				_ = c.Close()
			}
		})
	}
	wg.Wait()
}
