package main

// Packed series: the stored 5-minute windows as Cassandra holds them (blob format version 1,
// statsfeeder/sinks/cassandra/encoder.py), sent by the store undecoded, checked once as the
// frame is read and decoded again one window at a time while the engine iterates. A query's series then take about the bytes
// they take on disk (2-3 per sample) instead of 16 per sample, and no Python process decodes
// varints.

import (
	"errors"
	"sort"

	"github.com/prometheus/prometheus/model/histogram"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
	"github.com/prometheus/prometheus/tsdb/chunks"
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
	before     []int32 // in-range samples before each window (and in all, last)
}

func (s *packedSeries) Labels() labels.Labels { return s.lset }

// Iterator is Prometheus's own list iterator over the samples, which are decoded a window
// at a time as it reaches them (packedSamples).
func (s *packedSeries) Iterator(chunkenc.Iterator) chunkenc.Iterator {
	return storage.NewListSeriesIterator(&packedSamples{series: s, window: -1})
}

// check decodes every window once, as the frame is read: a malformed one fails the Select
// then, and each window's in-range sample count is known for packedSamples.
func (s *packedSeries) check() error {
	s.before = make([]int32, len(s.starts)+1)
	var samples []floatSample
	for w := range s.starts {
		var err error
		if samples, err = s.decodeWindow(w, samples[:0]); err != nil {
			return err
		}
		s.before[w+1] = s.before[w] + int32(len(samples))
	}
	return nil
}

// decodeWindow appends the in-range samples of window w to out.
func (s *packedSeries) decodeWindow(w int, out []floatSample) ([]floatSample, error) {
	begin := uint32(0)
	if w > 0 {
		begin = s.ends[w-1]
	}
	if begin > s.ends[w] {
		return out, errBlob
	}
	blob := s.data[begin:s.ends[w]]
	start := s.starts[w]
	if len(blob) == 0 {
		return out, errBlob
	}
	var grid [windowSeconds / slotSeconds]int64
	var times []int64
	position := 1
	if blob[0]&flagOnGrid != 0 {
		if len(blob) < 3 {
			return out, errBlob
		}
		bitmap := uint16(blob[1]) | uint16(blob[2])<<8
		n := 0
		for slot := 0; slot < windowSeconds/slotSeconds; slot++ {
			if bitmap>>slot&1 == 1 {
				grid[n] = start + int64(slotSeconds*(slot+1))
				n++
			}
		}
		times = grid[:n]
		position = 3
	} else {
		count, next, ok := uvarint(blob, position)
		if !ok || count > uint64(len(blob)) {
			return out, errBlob
		}
		position = next
		at := start
		times = make([]int64, 0, count)
		for i := uint64(0); i < count; i++ {
			offset, next, ok := uvarint(blob, position)
			if !ok {
				return out, errBlob
			}
			position = next
			at += int64(offset)
			times = append(times, at)
		}
	}
	var value int64
	for _, stamp := range times {
		zigzag, next, ok := uvarint(blob, position)
		if !ok {
			return out, errBlob
		}
		position = next
		value += int64(zigzag>>1) ^ -int64(zigzag&1)
		if ms := stamp * 1000; ms >= s.mint && ms <= s.maxt {
			out = append(out, floatSample{ms, float64(value) * s.scale})
		}
	}
	return out, nil
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

// packedSamples is one iteration's view of a packed series (storage.Samples): the window
// holding the sample asked for is decoded and kept until another is asked for. Get returns
// a pointer into that window's samples: a floatSample value in the chunks.Sample interface
// would be an allocation per call, several per sample as the list iterator calls it.
type packedSamples struct {
	series  *packedSeries
	window  int
	first   int // the index of the window's first sample
	samples []floatSample
}

func (p *packedSamples) Len() int { return int(p.series.before[len(p.series.starts)]) }

// Get is called several times per sample (Next, At, AtT, AtST): the window at hand first.
func (p *packedSamples) Get(i int) chunks.Sample {
	if k := i - p.first; p.window >= 0 && k >= 0 && k < len(p.samples) {
		return &p.samples[k]
	}
	s := p.series
	w := p.window
	if w >= 0 && w+1 < len(s.starts) && i >= int(s.before[w+1]) && i < int(s.before[w+2]) {
		w++ // the next window: iterating in order
	} else {
		w = sort.Search(len(s.starts), func(k int) bool { return int(s.before[k+1]) > i })
	}
	// Checked when the frame was read (check), so it decodes.
	p.samples, _ = s.decodeWindow(w, p.samples[:0])
	p.window, p.first = w, int(s.before[w])
	return &p.samples[i-p.first]
}

type floatSample struct {
	t int64
	f float64
}

func (s floatSample) T() int64                    { return s.t }
func (floatSample) ST() int64                     { return 0 }
func (s floatSample) F() float64                  { return s.f }
func (floatSample) H() *histogram.Histogram       { return nil }
func (floatSample) FH() *histogram.FloatHistogram { return nil }
func (floatSample) Type() chunkenc.ValueType      { return chunkenc.ValFloat }
func (s floatSample) Copy() chunks.Sample         { return s }
