package main

// Packed series: the stored 5-minute windows as Cassandra holds them (blob format version 1,
// statsfeeder/sinks/cassandra/encoder.py), sent by the store undecoded and decoded here one
// window at a time while the engine iterates. A query's series then take about the bytes
// they take on disk (2-3 per sample) instead of 16 per sample, and no Python process decodes
// varints.

import (
	"errors"
	"sort"

	"github.com/prometheus/prometheus/model/histogram"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
)

const (
	slotSeconds   = 20
	windowSeconds = 300
	flagOnGrid    = 0x01
)

var errBlob = errors.New("storage: a stored sample window is truncated or malformed")

// packedSeries keeps a series' windows as stored; samples outside [mint, maxt] (ms) are
// skipped, as the store would have cut them.
type packedSeries struct {
	lset       labels.Labels
	scale      float64
	mint, maxt int64
	starts     []int64  // window starts, seconds, ascending
	ends       []uint32 // each window's end offset in data
	data       []byte
}

func (s *packedSeries) Labels() labels.Labels { return s.lset }

func (s *packedSeries) Iterator(chunkenc.Iterator) chunkenc.Iterator {
	return &packedIterator{series: s, index: -1}
}

type packedIterator struct {
	series *packedSeries
	window int // the next window to decode
	t      []int64
	v      []float64
	index  int // position in t/v of the current sample
	err    error
	done   bool
}

// decodeWindow fills the buffer with the in-range samples of window w.
func (it *packedIterator) decodeWindow(w int) error {
	s := it.series
	begin := uint32(0)
	if w > 0 {
		begin = s.ends[w-1]
	}
	blob := s.data[begin:s.ends[w]]
	start := s.starts[w]
	it.t, it.v = it.t[:0], it.v[:0]
	if len(blob) == 0 {
		return errBlob
	}
	var stamps [windowSeconds / slotSeconds]int64
	var offStamps []int64
	position := 1
	var times []int64
	if blob[0]&flagOnGrid != 0 {
		if len(blob) < 3 {
			return errBlob
		}
		bitmap := uint16(blob[1]) | uint16(blob[2])<<8
		n := 0
		for slot := 0; slot < windowSeconds/slotSeconds; slot++ {
			if bitmap>>slot&1 == 1 {
				stamps[n] = start + int64(slotSeconds*(slot+1))
				n++
			}
		}
		times = stamps[:n]
		position = 3
	} else {
		count, next, ok := uvarint(blob, position)
		if !ok || count > uint64(len(blob)) {
			return errBlob
		}
		position = next
		at := start
		offStamps = make([]int64, 0, count)
		for i := uint64(0); i < count; i++ {
			offset, next, ok := uvarint(blob, position)
			if !ok {
				return errBlob
			}
			position = next
			at += int64(offset)
			offStamps = append(offStamps, at)
		}
		times = offStamps
	}
	var value int64
	for _, stamp := range times {
		zigzag, next, ok := uvarint(blob, position)
		if !ok {
			return errBlob
		}
		position = next
		value += int64(zigzag>>1) ^ -int64(zigzag&1)
		ms := stamp * 1000
		if ms >= s.mint && ms <= s.maxt {
			it.t = append(it.t, ms)
			it.v = append(it.v, float64(value)*s.scale)
		}
	}
	return nil
}

func uvarint(blob []byte, position int) (uint64, int, bool) {
	var result uint64
	var shift uint
	for position < len(blob) && shift < 64 {
		b := blob[position]
		position++
		result |= uint64(b&0x7F) << shift
		if b < 0x80 {
			return result, position, true
		}
		shift += 7
	}
	return 0, position, false
}

// fill moves to the next window holding an in-range sample with a timestamp >= t (seconds
// precision is enough to skip: an on-grid window's samples are in (start, start+300]).
func (it *packedIterator) fill(t int64) bool {
	s := it.series
	for it.window < len(s.starts) {
		w := it.window
		it.window++
		if (s.starts[w]+windowSeconds)*1000 < t && it.onGrid(w) {
			continue
		}
		if err := it.decodeWindow(w); err != nil {
			it.err, it.done = err, true
			return false
		}
		for i, stamp := range it.t {
			if stamp >= t {
				it.index = i
				return true
			}
		}
	}
	it.done = true
	return false
}

func (it *packedIterator) onGrid(w int) bool {
	begin := uint32(0)
	if w > 0 {
		begin = it.series.ends[w-1]
	}
	return begin < it.series.ends[w] && it.series.data[begin]&flagOnGrid != 0
}

func (it *packedIterator) Next() chunkenc.ValueType {
	if it.done {
		return chunkenc.ValNone
	}
	if it.index >= 0 && it.index+1 < len(it.t) {
		it.index++
		return chunkenc.ValFloat
	}
	if it.fill(-1 << 62) {
		return chunkenc.ValFloat
	}
	return chunkenc.ValNone
}

func (it *packedIterator) Seek(t int64) chunkenc.ValueType {
	if it.done {
		return chunkenc.ValNone
	}
	if it.index < 0 {
		it.index = 0
		if !it.fill(t) {
			return chunkenc.ValNone
		}
		return chunkenc.ValFloat
	}
	if it.t[it.index] >= t {
		return chunkenc.ValFloat
	}
	rest := it.t[it.index:]
	if found := sort.Search(len(rest), func(i int) bool { return rest[i] >= t }); found < len(rest) {
		it.index += found
		return chunkenc.ValFloat
	}
	if it.fill(t) {
		return chunkenc.ValFloat
	}
	return chunkenc.ValNone
}

func (it *packedIterator) At() (int64, float64) { return it.t[it.index], it.v[it.index] }

func (*packedIterator) AtHistogram(*histogram.Histogram) (int64, *histogram.Histogram) {
	panic("statsfeeder stores no histograms")
}

func (*packedIterator) AtFloatHistogram(*histogram.FloatHistogram) (int64, *histogram.FloatHistogram) {
	panic("statsfeeder stores no histograms")
}

func (it *packedIterator) AtT() int64 { return it.t[it.index] }
func (*packedIterator) AtST() int64   { return 0 }
func (it *packedIterator) Err() error { return it.err }
