package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"slices"
	"time"
)

const latMaxSamples = 2_000_000

// measureLatency measures request/response round trips of one fixed-size
// message on one persistent connection, one at a time, and records the
// p50, p99 and p99.9 of each repetition.
func (b *bench) measureLatency(ctx context.Context) error {
	for rep := range b.p.reps {
		for _, t := range rotate(b.targets, rep) {
			s, err := runLatency(ctx, t.echo, b.p.latDur)
			if err != nil {
				return fmt.Errorf("%s: %w", t.name, err)
			}
			b.res.add("lat-p50", t.name, float64(percentile(s, 0.50))/1e3)
			b.res.add("lat-p99", t.name, float64(percentile(s, 0.99))/1e3)
			b.res.add("lat-p999", t.name, float64(percentile(s, 0.999))/1e3)
		}
	}
	return nil
}

// runLatency returns the sorted round-trip times over dur, after a short
// warm-up, bounded by latMaxSamples.
func runLatency(ctx context.Context, a string, dur time.Duration) ([]time.Duration, error) {
	c, err := net.DialTimeout("tcp", a, 2*time.Second)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	warm := min(dur/4, 100*time.Millisecond)
	start := time.Now()
	_ = c.SetDeadline(start.Add(warm + dur + 5*time.Second))
	var msg [msgSize]byte
	msg[0] = 'e'
	samples := make([]time.Duration, 0, 100_000)
	for len(samples) < latMaxSamples && ctx.Err() == nil {
		t0 := time.Now()
		if t0.Sub(start) > warm+dur {
			break
		}
		if _, err := c.Write(msg[:]); err != nil {
			return nil, err
		}
		if _, err := io.ReadFull(c, msg[:]); err != nil {
			return nil, err
		}
		if d := time.Since(t0); t0.Sub(start) >= warm {
			samples = append(samples, d)
		}
	}
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	_ = quit(c)
	slices.Sort(samples)
	return samples, nil
}
