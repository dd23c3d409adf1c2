package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// bulkKinds are the four bulk measurements: 1 and 8 streams, upload (to
// the sink) and download (from the source).
var bulkKinds = []struct {
	metric  string
	streams int
	upload  bool
}{
	{"gbps-1-up", 1, true},
	{"gbps-1-down", 1, false},
	{"gbps-8-up", 8, true},
	{"gbps-8-down", 8, false},
}

// measureBulk runs every bulk kind on every target, alternating targets,
// p.reps times. The proxy's CPU time over all four windows of a
// repetition, divided by the bytes moved in them, is its CPU per GB.
func (b *bench) measureBulk(ctx context.Context) error {
	for rep := range b.p.reps {
		cpu := map[string]time.Duration{}
		bytes := map[string]int64{}
		for _, k := range bulkKinds {
			for _, t := range rotate(b.targets, rep) {
				a := t.source
				if k.upload {
					a = t.sink
				}
				r, err := runBulk(ctx, a, k.streams, k.upload, b.p.bulkWarm, b.p.bulkDur, t.pid())
				if err != nil {
					return fmt.Errorf("%s %s: %w", t.name, k.metric, err)
				}
				b.res.add(k.metric, t.name, float64(r.bytes)/r.elapsed.Seconds()/1e9)
				cpu[t.name] += r.cpu
				bytes[t.name] += r.bytes
			}
		}
		for _, t := range b.targets {
			if t.proc != nil && bytes[t.name] > 0 {
				b.res.add("cpu-s-per-gb", t.name, cpu[t.name].Seconds()/(float64(bytes[t.name])/1e9))
			}
		}
	}
	return nil
}

type bulkResult struct {
	bytes   int64
	elapsed time.Duration
	cpu     time.Duration // the proxy's, over the same window
}

// runBulk opens streams connections to a, moves bytes for warm+dur, and
// counts the bytes and CPU of the last dur only. Every stream stops at a
// deadline even if closing fails to stop it.
func runBulk(ctx context.Context, a string, streams int, upload bool, warm, dur time.Duration, pid int) (bulkResult, error) {
	conns := make([]*net.TCPConn, 0, streams)
	closeAll := func() {
		for _, c := range conns {
			_ = c.SetLinger(0) // RST: no drain, no TIME_WAIT
			_ = c.Close()
		}
	}
	for range streams {
		c, err := net.DialTimeout("tcp", a, 2*time.Second)
		if err != nil {
			closeAll()
			return bulkResult{}, err
		}
		conns = append(conns, c.(*net.TCPConn))
	}
	var (
		total   atomic.Int64
		stopped atomic.Bool
		errOnce sync.Once
		runErr  error
		wg      sync.WaitGroup
	)
	deadline := time.Now().Add(warm + dur + 5*time.Second)
	zeros := make([]byte, 1<<20)
	for _, c := range conns {
		_ = c.SetDeadline(deadline)
		wg.Go(func() {
			buf := zeros
			if !upload {
				buf = make([]byte, 1<<20)
			}
			for {
				var n int
				var err error
				if upload {
					n, err = c.Write(buf)
				} else {
					n, err = c.Read(buf)
				}
				total.Add(int64(n))
				if err != nil {
					if !stopped.Load() {
						errOnce.Do(func() { runErr = err })
					}
					return
				}
			}
		})
	}
	err := sleepCtx(ctx, warm)
	b0, c0, t0 := total.Load(), cpuTime(pid), time.Now()
	if err == nil {
		err = sleepCtx(ctx, dur)
	}
	b1, c1, t1 := total.Load(), cpuTime(pid), time.Now()
	stopped.Store(true)
	closeAll()
	wg.Wait()
	time.Sleep(20 * time.Millisecond) // let the proxy see the resets before the next target
	if err != nil {
		return bulkResult{}, err
	}
	if runErr != nil {
		return bulkResult{}, fmt.Errorf("a stream broke: %w", runErr)
	}
	if b1 == b0 {
		return bulkResult{}, errors.New("no bytes moved")
	}
	return bulkResult{bytes: b1 - b0, elapsed: t1.Sub(t0), cpu: c1 - c0}, nil
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
