package main

import (
	"math"
	"slices"
	"sync"
	"time"
)

// results holds every sample by metric and target: one per repetition
// (medians are taken when printing), or one in all for figures that are
// not repeated (swap latency, error counts).
type results struct {
	mu      sync.Mutex
	samples map[string]map[string][]float64
	notes   []string
}

func newResults() *results {
	return &results{samples: map[string]map[string][]float64{}}
}

func (r *results) add(metric, target string, v float64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := r.samples[metric]
	if m == nil {
		m = map[string][]float64{}
		r.samples[metric] = m
	}
	m[target] = append(m[target], v)
}

func (r *results) note(s string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.notes = append(r.notes, s)
}

// median of the metric's samples for target; NaN when there are none.
func (r *results) median(metric, target string) float64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return median(r.samples[metric][target])
}

func (r *results) sum(metric, target string) float64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	xs := r.samples[metric][target]
	if len(xs) == 0 {
		return math.NaN()
	}
	s := 0.0
	for _, x := range xs {
		s += x
	}
	return s
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if n := len(s); n%2 == 0 {
		return (s[n/2-1] + s[n/2]) / 2
	}
	return s[len(s)/2]
}

// percentile of sorted durations, p in [0,1], by the nearest rank.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(p*float64(len(sorted)))) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

// rotate returns the targets in the order for repetition rep: each
// repetition starts one target further, so that no target always runs
// first (on a cold cache) or right after the same neighbour.
func rotate(ts []*target, rep int) []*target {
	k := rep % len(ts)
	return append(slices.Clone(ts[k:]), ts[:k]...)
}
