package main

import (
	"math/rand"
	"testing"

	"github.com/prometheus/prometheus/tsdb/chunkenc"
)

func putUvarint(b []byte, v uint64) []byte {
	for v >= 0x80 {
		b = append(b, byte(v)|0x80)
		v >>= 7
	}
	return append(b, byte(v))
}

// encodeWindow writes blob format version 1 as statsfeeder/sinks/cassandra/encoder.py does.
func encodeWindow(start int64, stamps []int64, values []int64) []byte {
	onGrid := true
	var bitmap uint16
	for _, t := range stamps {
		offset := t - start
		if offset%slotSeconds != 0 || offset <= 0 || offset > windowSeconds {
			onGrid = false
			break
		}
		bitmap |= 1 << (offset/slotSeconds - 1)
	}
	var out []byte
	if onGrid {
		out = []byte{flagOnGrid, byte(bitmap), byte(bitmap >> 8)}
	} else {
		out = putUvarint([]byte{0}, uint64(len(stamps)))
		previous := start
		for _, t := range stamps {
			out = putUvarint(out, uint64(t-previous))
			previous = t
		}
	}
	var previous int64
	for _, v := range values {
		delta := v - previous
		previous = v
		out = putUvarint(out, uint64((delta<<1)^(delta>>63)))
	}
	return out
}

// A packed series iterates (Next and Seek) exactly the samples of its windows inside
// [mint, maxt], on and off the 20-s grid, scaled.
func TestPackedSeriesIteratesTheWindowsSamplesInRange(t *testing.T) {
	rng := rand.New(rand.NewSource(7))
	for round := 0; round < 200; round++ {
		series := &packedSeries{scale: 0.01}
		var wantT []int64
		var wantV []float64
		base := int64(1795334400)
		windows := rng.Intn(12)
		series.mint = (base + int64(rng.Intn(900))) * 1000
		series.maxt = (base + int64(windows*300-rng.Intn(900))) * 1000
		for w := 0; w < windows; w++ {
			start := base + int64(300*w)
			var stamps, values []int64
			offGrid := rng.Intn(4) == 0
			for slot := 1; slot <= 15; slot++ {
				if rng.Intn(3) == 0 {
					continue
				}
				stamp := start + int64(20*slot)
				if offGrid {
					stamp -= int64(rng.Intn(19))
				}
				stamps = append(stamps, stamp)
				values = append(values, rng.Int63n(2_000_000)-1_000_000)
			}
			if len(stamps) == 0 {
				continue
			}
			blob := encodeWindow(start, stamps, values)
			series.starts = append(series.starts, start)
			series.data = append(series.data, blob...)
			series.ends = append(series.ends, uint32(len(series.data)))
			for i, stamp := range stamps {
				if ms := stamp * 1000; ms >= series.mint && ms <= series.maxt {
					wantT = append(wantT, ms)
					wantV = append(wantV, float64(values[i])*0.01)
				}
			}
		}
		if _, err := series.check(nil); err != nil {
			t.Fatal(err)
		}
		it := series.Iterator(nil)
		var gotT []int64
		for it.Next() == chunkenc.ValFloat {
			at, value := it.At()
			if len(gotT) < len(wantV) && value != wantV[len(gotT)] {
				t.Fatalf("round %d: value %v at %d, want %v", round, value, at, wantV[len(gotT)])
			}
			gotT = append(gotT, at)
		}
		if it.Err() != nil || len(gotT) != len(wantT) {
			t.Fatalf("round %d: %d samples (err %v), want %d", round, len(gotT), it.Err(), len(wantT))
		}
		for i := range gotT {
			if gotT[i] != wantT[i] {
				t.Fatalf("round %d: sample %d at %d, want %d", round, i, gotT[i], wantT[i])
			}
		}
		// Seek to random points, forward only: the first sample at or after each (or the
		// current one, if already there), with Next calls in between.
		seeker := series.Iterator(nil)
		target := series.mint - 5000
		current := -1
		for step := 0; step < 20; step++ {
			target += int64(rng.Intn(200_000))
			want := -1
			for i := max(current, 0); i < len(wantT); i++ {
				if wantT[i] >= target {
					want = i
					break
				}
			}
			kind := seeker.Seek(target)
			if want < 0 {
				if kind != chunkenc.ValNone || seeker.Next() != chunkenc.ValNone {
					t.Fatalf("round %d: seek %d found a sample past the end", round, target)
				}
				break
			}
			if at, _ := seeker.At(); kind != chunkenc.ValFloat || at != wantT[want] {
				t.Fatalf("round %d: seek %d at %d, want %d", round, target, at, wantT[want])
			}
			current = want
			if rng.Intn(2) == 0 {
				current++
				kind := seeker.Next()
				if current == len(wantT) {
					if kind != chunkenc.ValNone {
						t.Fatalf("round %d: next after the last sample found one", round)
					}
					break
				}
				if at := seeker.AtT(); kind != chunkenc.ValFloat || at != wantT[current] {
					t.Fatalf("round %d: next at %d, want %d", round, at, wantT[current])
				}
			}
		}
	}
}

func TestATruncatedWindowFailsTheCheck(t *testing.T) {
	blob := encodeWindow(1000, []int64{1020, 1040}, []int64{5, 900000})
	series := &packedSeries{scale: 1, mint: 0, maxt: 1 << 50, starts: []int64{1000},
		data: blob[:len(blob)-1], ends: []uint32{uint32(len(blob) - 1)}}
	if _, err := series.check(nil); err == nil {
		t.Fatal("a truncated window decoded without error")
	}
}

func TestASampleOutsideItsWindowFailsTheCheck(t *testing.T) {
	blob := encodeWindow(1000, []int64{1020, 1307}, []int64{5, 6}) // 1307: past 1000+300
	series := &packedSeries{scale: 1, mint: 0, maxt: 1 << 50, starts: []int64{1000},
		data: blob, ends: []uint32{uint32(len(blob))}}
	if _, err := series.check(nil); err == nil {
		t.Fatal("a window with a sample past its five minutes decoded without error")
	}
}

// The check's quick walk of on-grid windows accepts exactly the windows decodeWindow does.
func TestTheCheckAcceptsWhatDecodesOnTheGrid(t *testing.T) {
	rng := rand.New(rand.NewSource(11))
	accepted := 0
	for round := 0; round < 20000; round++ {
		blob := []byte{flagOnGrid, byte(rng.Intn(256)), byte(rng.Intn(256))}
		for i := rng.Intn(40); i > 0; i-- {
			b := byte(rng.Intn(256))
			if rng.Intn(3) == 0 {
				b |= 0x80
			}
			blob = append(blob, b)
		}
		series := &packedSeries{scale: 1, mint: 0, maxt: 1 << 50, starts: []int64{1000},
			data: blob, ends: []uint32{uint32(len(blob))}}
		_, checked := series.check(nil)
		_, decoded := series.decodeWindow(0, nil)
		if (checked == nil) != (decoded == nil) {
			t.Fatalf("blob %x: check says %v, decoding %v", blob, checked, decoded)
		}
		if checked == nil {
			accepted++
		}
	}
	if accepted < 1000 {
		t.Fatalf("only %d of the random windows were valid: the test says little", accepted)
	}
}
