package main

import (
	"context"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

const (
	rateConc     = 32
	rateMaxConns = 500_000 // the loop stops here at the latest
)

// measureRate measures new connections per second at concurrency 32, each
// one request/response and a close, and the proxy's CPU per 1,000 of them.
func (b *bench) measureRate(ctx context.Context) error {
	for rep := range b.p.reps {
		for _, t := range rotate(b.targets, rep) {
			r, err := runRate(ctx, t.echo, b.p.rateDur, t.pid())
			if err != nil {
				return fmt.Errorf("%s: %w", t.name, err)
			}
			b.res.add("conn-rate", t.name, float64(r.ok)/r.elapsed.Seconds())
			b.res.add("conn-errors", t.name, float64(r.errs))
			if t.proc != nil && r.ok > 0 {
				b.res.add("cpu-ms-per-1k", t.name, r.cpu.Seconds()*1000/(float64(r.ok)/1000))
			}
			if r.firstErr != nil {
				b.res.note(fmt.Sprintf("%s connection rate: %d errors, first: %v", t.name, r.errs, r.firstErr))
			}
		}
	}
	return nil
}

type rateResult struct {
	ok, errs int64 // ok: in the window; errs: over the whole run
	all      int64 // connections completed over the whole run, warm-up and tail included
	firstErr error
	elapsed  time.Duration
	cpu      time.Duration
}

// runRate runs rateConc workers for a short warm-up and then dur; each
// connects, sends one message that asks the backend to answer and close,
// reads the answer and the close, and closes. The server closes first, so
// TIME_WAIT stays in the container rather than on the host's ephemeral
// ports.
func runRate(ctx context.Context, a string, dur time.Duration, pid int) (rateResult, error) {
	warm := min(dur/4, 100*time.Millisecond)
	var (
		done, errs atomic.Int64
		stop       atomic.Bool
		errMu      sync.Mutex
		firstErr   error
		wg         sync.WaitGroup
	)
	dialer := net.Dialer{Timeout: 2 * time.Second}
	for range rateConc {
		wg.Go(func() {
			for !stop.Load() && done.Load()+errs.Load() < rateMaxConns {
				if err := oneConn(&dialer, a); err != nil {
					errs.Add(1)
					errMu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					errMu.Unlock()
					continue
				}
				done.Add(1)
			}
		})
	}
	err := sleepCtx(ctx, warm)
	n0, c0, t0 := done.Load(), cpuTime(pid), time.Now()
	if err == nil {
		err = sleepCtx(ctx, dur)
	}
	n1, c1, t1 := done.Load(), cpuTime(pid), time.Now()
	stop.Store(true)
	wg.Wait()
	if err != nil {
		return rateResult{}, err
	}
	return rateResult{ok: n1 - n0, errs: errs.Load(), all: done.Load(), firstErr: firstErr, elapsed: t1.Sub(t0), cpu: c1 - c0}, nil
}

func oneConn(d *net.Dialer, a string) error {
	c, err := d.Dial("tcp", a)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	return quit(c)
}
