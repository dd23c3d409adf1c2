package main

import (
	"math/bits"
	"sync"
)

// Kept bytes live in pooled buffers of a few sizes, powers of two from
// keptMin up to maxReplayBytes, so a connection keeps about what its
// client sent: a one-byte client costs keptMin, not -replay_bytes. The
// proxy charges the capacity of every buffer to its budget, so the memory
// of all kept bytes together stays under replayBudget.
const (
	keptMinShift = 9 // 512 bytes
	keptMin      = 1 << keptMinShift
	keptMaxShift = 20 // maxReplayBytes
)

var keptPools [keptMaxShift - keptMinShift + 1]sync.Pool

// keptClass is the pool whose buffers hold n bytes.
func keptClass(n int) int {
	if n <= keptMin {
		return 0
	}
	return bits.Len(uint(n-1)) - keptMinShift
}

// getKept returns an empty buffer with room for n bytes, pooled up to
// maxReplayBytes.
func getKept(n int) *[]byte {
	c := keptClass(n)
	if c < len(keptPools) {
		if b, ok := keptPools[c].Get().(*[]byte); ok {
			*b = (*b)[:0]
			return b
		}
	}
	b := make([]byte, 0, keptMin<<c)
	return &b
}

func putKept(b *[]byte) {
	if c := keptClass(cap(*b)); c < len(keptPools) {
		keptPools[c].Put(b)
	}
}

// grow makes room in pr's kept buffer for n more bytes, charging the
// proxy's budget for the larger buffer. It fails when the pair may not
// keep that much (-replay_bytes), or the budget is spent: the pair is then
// committed. Called with pr.mu held, while no move reads kept.
func (p *proxy) grow(pr *pair, n int) bool {
	need := len(pr.kept) + n
	if need > p.replayMax {
		return false
	}
	if pr.buf != nil && need <= cap(pr.kept) {
		return true
	}
	size := keptMin << keptClass(need)
	old := 0
	if pr.buf != nil {
		old = cap(*pr.buf)
	}
	if p.kept.Add(int64(size-old)) > replayBudget {
		p.kept.Add(-int64(size - old))
		return false
	}
	buf := getKept(size)
	*buf = append(*buf, pr.kept...)
	if pr.buf != nil {
		putKept(pr.buf)
	}
	pr.buf, pr.kept = buf, *buf
	return true
}

// free gives pr's kept buffer back and uncharges it. Called with pr.mu
// held, once nothing can use it.
func (p *proxy) free(pr *pair) {
	if pr.buf == nil {
		return
	}
	p.kept.Add(-int64(cap(*pr.buf)))
	putKept(pr.buf)
	pr.buf, pr.kept = nil, nil
}
