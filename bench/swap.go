package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

const (
	pollInterval  = 200 * time.Millisecond // docker-proxy's status poll (statusInterval)
	swapProbers   = 2                      // concurrent probers: the resolution is a fraction of one probe
	swapTimeout   = 3 * time.Second
	swapMaxProbes = 100_000
)

// measureSwaps deploys new containers of the tag one after another. Each
// one's /status turns 200 at a moment it reports (/ready_at), and probers
// open new connections through docker-proxy from just before that moment
// until one reaches the new container: the swap latency is from the
// readiness moment to the start of that connection. It is split in two:
// readiness to docker-proxy's first 200 answer (the poll), and that answer
// to the first new connection routed to the new container.
func (b *bench) measureSwaps(ctx context.Context) error {
	dp := b.target(tDP)
	if dp == nil {
		return errors.New("no docker-proxy target")
	}
	var failed, probeErrs int
	for i := range b.p.swaps {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		r, err := b.oneSwap(ctx, dp, i)
		probeErrs += r.probeErrs
		if err != nil {
			failed++
			b.res.note(fmt.Sprintf("deploy %d: %v", i+1, err))
			continue
		}
		b.res.add("swap-ms", tDP, ms(r.total))
		b.res.add("swap-poll-ms", tDP, ms(r.poll))
		b.res.add("swap-route-ms", tDP, ms(r.route))
	}
	b.res.add("swap-failed", tDP, float64(failed))
	b.res.add("swap-probe-errors", tDP, float64(probeErrs))
	// Old containers go after the 1s grace period: wait for that, bounded.
	deadline := time.Now().Add(5 * time.Second)
	for len(runningContainers(ctx, b.label)) > 1 && time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(100 * time.Millisecond)
	}
	if n := len(runningContainers(ctx, b.label)); n != 1 {
		b.res.note(fmt.Sprintf("after the deploys %d containers of the tag were running (want 1)", n))
	}
	return nil
}

func ms(d time.Duration) float64 { return float64(d) / 1e6 }

func (b *bench) target(name string) *target {
	for _, t := range b.targets {
		if t.name == name {
			return t
		}
	}
	return nil
}

type swapResult struct {
	total, poll, route time.Duration
	probeErrs          int
}

func (b *bench) oneSwap(ctx context.Context, dp *target, i int) (swapResult, error) {
	// A random part of a poll interval on top, so that the readiness
	// moment does not fall at the same phase of docker-proxy's polls (which
	// start with the container) every time.
	ready := b.p.swapReady + rand.N(pollInterval)
	id, err := b.startContainer(ctx, fmt.Sprintf("deploy%d", i+1), ready.String())
	if err != nil {
		return swapResult{}, err
	}
	ip, err := containerIP(ctx, id)
	if err != nil {
		return swapResult{}, err
	}
	host := id[:12]
	readyAt, _, err := readyTimes(ctx, ip, swapTimeout)
	if err != nil {
		return swapResult{}, err
	}
	start := readyAt.Add(-30 * time.Millisecond)
	if time.Now().After(start) {
		return swapResult{}, fmt.Errorf("container %s started too slowly to probe before it was ready", host)
	}
	if err := sleepCtx(ctx, time.Until(start)); err != nil {
		return swapResult{}, err
	}
	hit, errs, err := probeUntil(ctx, dp.http, host)
	r := swapResult{probeErrs: errs}
	if err != nil {
		return r, err
	}
	_, firstOK, err := readyTimes(ctx, ip, time.Second)
	if err != nil {
		return r, err
	}
	r.total, r.poll, r.route = hit.Sub(readyAt), firstOK.Sub(readyAt), hit.Sub(firstOK)
	return r, nil
}

var directHTTP = &http.Client{
	Timeout:   time.Second,
	Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true},
}

// readyTimes asks the container, directly, when its /status turns (or
// turned) 200 and when it first answered 200 (zero if not yet). It retries
// while the container is starting.
func readyTimes(ctx context.Context, ip string, wait time.Duration) (readyAt, firstOK time.Time, err error) {
	deadline := time.Now().Add(wait)
	for {
		var resp *http.Response
		resp, err = directHTTP.Get("http://" + addr(ip, portHTTP) + "/ready_at")
		if err == nil {
			var r, f int64
			_, err = fmt.Fscan(resp.Body, &r, &f)
			_ = resp.Body.Close()
			if err == nil {
				readyAt = time.Unix(0, r)
				if f != 0 {
					firstOK = time.Unix(0, f)
				}
				return readyAt, firstOK, nil
			}
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return readyAt, firstOK, fmt.Errorf("GET %s/ready_at: %w", ip, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// probeUntil opens new connections through docker-proxy, swapProbers at a
// time, until one is answered by host; it returns the start time of the
// earliest such connection and how many probes failed.
func probeUntil(ctx context.Context, a, host string) (time.Time, int, error) {
	ctx, cancel := context.WithTimeout(ctx, swapTimeout)
	defer cancel()
	var (
		mu    sync.Mutex
		hit   time.Time
		count atomic.Int64
		errs  atomic.Int64
		wg    sync.WaitGroup
	)
	for range swapProbers {
		wg.Go(func() {
			for ctx.Err() == nil && count.Add(1) <= swapMaxProbes {
				t0 := time.Now()
				got, err := whoAnswers(a)
				if err != nil {
					errs.Add(1)
					continue
				}
				if got == host {
					mu.Lock()
					if hit.IsZero() || t0.Before(hit) {
						hit = t0
					}
					mu.Unlock()
					cancel()
					return
				}
			}
		})
	}
	wg.Wait()
	if hit.IsZero() {
		return hit, int(errs.Load()), fmt.Errorf("no new connection reached %s within %v", host, swapTimeout)
	}
	return hit, int(errs.Load()), nil
}

// whoAnswers makes one HTTP/1.0 request on a new connection and returns
// the body, the answering container's hostname. The server closes first.
func whoAnswers(a string) (string, error) {
	c, err := net.DialTimeout("tcp", a, time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := io.WriteString(c, "GET / HTTP/1.0\r\nHost: bench\r\n\r\n"); err != nil {
		return "", err
	}
	resp, err := io.ReadAll(io.LimitReader(c, 4096))
	if err != nil {
		return "", err
	}
	_, body, ok := bytes.Cut(resp, []byte("\r\n\r\n"))
	if !ok || !bytes.HasPrefix(resp, []byte("HTTP/1.0 200")) && !bytes.HasPrefix(resp, []byte("HTTP/1.1 200")) {
		return "", fmt.Errorf("bad answer %q", resp)
	}
	return strings.TrimSpace(string(body)), nil
}
