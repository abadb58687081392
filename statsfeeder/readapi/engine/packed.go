package main

// Packed series: the stored 5-minute windows as Cassandra holds them (blob format version 1,
// statsfeeder/sinks/cassandra/encoder.py), sent by the store undecoded, checked once as the
// frame is read and decoded again one window at a time while the engine iterates. A query's
// series then take about the bytes they take on disk (2-3 per sample) instead of 16 per
// sample, and no Python process decodes varints.

import (
	"errors"
	"math/bits"
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

// Iterator walks the samples a window at a time (packedIterator), reusing it when given one.
func (s *packedSeries) Iterator(it chunkenc.Iterator) chunkenc.Iterator {
	p, ok := it.(*packedIterator)
	if !ok {
		p = &packedIterator{}
	}
	p.series, p.window, p.samples, p.at = s, -1, p.samples[:0], -1
	return p
}

// check decodes every window once, as the frame is read: a malformed one (or one with a
// sample outside its 5 minutes, which the iterator's Seek relies on) fails the Select then.
// samples is a buffer to decode into, returned for the next call. A window on the 20-s
// grid (a real vCenter's) only has its values' varints walked: its stamps come from its
// bitmap, inside its 5 minutes by construction.
func (s *packedSeries) check(samples []floatSample) ([]floatSample, error) {
	begin := uint32(0)
	for w, end := range s.ends {
		if begin > end || begin == end {
			return samples, errBlob
		}
		blob := s.data[begin:end]
		begin = end
		if blob[0]&flagOnGrid != 0 && len(blob) >= 3 {
			bitmap := uint16(blob[1]) | uint16(blob[2])<<8
			if !varintsFit(blob[3:], bits.OnesCount16(bitmap&(1<<(windowSeconds/slotSeconds)-1))) {
				return samples, errBlob
			}
			continue
		}
		var err error
		if samples, err = s.decodeWindow(w, samples[:0]); err != nil {
			return samples, err
		}
	}
	return samples, nil
}

// varintsFit reports whether blob holds n varints as uvarint reads them (at most 10 bytes).
func varintsFit(blob []byte, n int) bool {
	length := 0
	for _, b := range blob {
		if n == 0 {
			return true
		}
		length++
		if b < 0x80 {
			n, length = n-1, 0
		} else if length >= 10 {
			return false
		}
	}
	return n == 0
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
		if !ok || stamp <= start || stamp > start+windowSeconds {
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

// packedIterator is a chunkenc.Iterator over a packed series: the window holding the
// current sample is decoded into samples and kept until the iterator moves past it. Its
// Seek(int64) is chunkenc's, not io.Seeker's: go vet's stdmethods check is off for it
// (tests/unit/test_engine_source.py).
type packedIterator struct {
	series  *packedSeries
	window  int // the window in samples; -1 before the first, len(starts) once exhausted
	samples []floatSample
	at      int // the current sample in samples
}

func (p *packedIterator) load(w int) {
	// Checked when the frame was read (check), so it decodes.
	p.samples, _ = p.series.decodeWindow(w, p.samples[:0])
	p.window, p.at = w, 0
}

func (p *packedIterator) exhausted() chunkenc.ValueType {
	p.window, p.samples, p.at = len(p.series.starts), p.samples[:0], 0
	return chunkenc.ValNone
}

func (p *packedIterator) Next() chunkenc.ValueType {
	if p.window >= len(p.series.starts) {
		return chunkenc.ValNone
	}
	p.at++
	for p.at >= len(p.samples) {
		if p.window+1 >= len(p.series.starts) {
			return p.exhausted()
		}
		p.load(p.window + 1)
	}
	return chunkenc.ValFloat
}

// Seek moves to the first sample at or after t (ms), never back. A window holds samples
// stamped in (start, start+5 min] (check), so the windows ending before t are skipped
// undecoded.
func (p *packedIterator) Seek(t int64) chunkenc.ValueType {
	starts := p.series.starts
	if p.window >= len(starts) {
		return chunkenc.ValNone
	}
	if p.window >= 0 && p.at >= 0 && p.at < len(p.samples) {
		if p.samples[p.at].t >= t {
			return chunkenc.ValFloat
		}
		if p.samples[len(p.samples)-1].t >= t {
			rest := p.samples[p.at:]
			p.at += sort.Search(len(rest), func(i int) bool { return rest[i].t >= t })
			return chunkenc.ValFloat
		}
	}
	from := p.window + 1
	w := from + sort.Search(len(starts)-from, func(i int) bool {
		return (starts[from+i]+windowSeconds)*1000 >= t
	})
	for ; w < len(starts); w++ {
		p.load(w)
		if k := sort.Search(len(p.samples), func(i int) bool { return p.samples[i].t >= t }); k < len(p.samples) {
			p.at = k
			return chunkenc.ValFloat
		}
	}
	return p.exhausted()
}

func (p *packedIterator) At() (int64, float64) {
	s := &p.samples[p.at]
	return s.t, s.f
}

func (p *packedIterator) AtHistogram(*histogram.Histogram) (int64, *histogram.Histogram) {
	return p.samples[p.at].t, nil
}

func (p *packedIterator) AtFloatHistogram(*histogram.FloatHistogram) (int64, *histogram.FloatHistogram) {
	return p.samples[p.at].t, nil
}

func (p *packedIterator) AtT() int64 { return p.samples[p.at].t }
func (*packedIterator) AtST() int64  { return 0 }
func (*packedIterator) Err() error   { return nil }

type floatSample struct {
	t int64
	f float64
}
