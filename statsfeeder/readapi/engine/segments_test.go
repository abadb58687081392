package main

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"math"
	"testing"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
)

// segment encodes one hour piece as statsfeeder/readapi/pieces.py does.
func segment(starts []int64, blobs [][]byte) []byte {
	out := binary.LittleEndian.AppendUint32(nil, uint32(len(starts)))
	size := 0
	for _, b := range blobs {
		size += len(b)
	}
	out = binary.LittleEndian.AppendUint32(out, uint32(size))
	for _, s := range starts {
		out = binary.LittleEndian.AppendUint64(out, uint64(s))
	}
	for _, b := range blobs {
		out = binary.LittleEndian.AppendUint32(out, uint32(len(b)))
	}
	for _, b := range blobs {
		out = append(out, b...)
	}
	return out
}

func segmentsHead(mint, maxt int64, segments int) []byte {
	out := binary.LittleEndian.AppendUint64(nil, math.Float64bits(0.5))
	out = binary.LittleEndian.AppendUint64(out, uint64(mint))
	out = binary.LittleEndian.AppendUint64(out, uint64(maxt))
	out = binary.LittleEndian.AppendUint32(out, 0)
	return binary.LittleEndian.AppendUint32(out, uint32(segments))
}

func TestSegmentsKeepOnlyTheWindowsThatMayHoldSamplesInRange(t *testing.T) {
	base := int64(1795334400)
	var hours [2][]byte
	for h := range hours {
		var starts []int64
		var blobs [][]byte
		for w := int64(0); w < 12; w++ {
			start := base + int64(h)*3600 + 300*w
			stamps := []int64{start + 20, start + 300}
			starts = append(starts, start)
			blobs = append(blobs, encodeWindow(start, stamps, []int64{w, w + 1}))
		}
		hours[h] = segment(starts, blobs)
	}
	// [base+3000, base+3900]: windows starting 2700 to 3900 may hold samples in range.
	mint, maxt := (base+3000)*1000, (base+3900)*1000
	frame := append(segmentsHead(mint, maxt, 2), append(hours[0], hours[1]...)...)
	series, err := (&frameDecoder{r: bufio.NewReader(bytes.NewReader(frame))}).segments(labels.EmptyLabels())
	if err != nil {
		t.Fatal(err)
	}
	want := []int64{base + 2700, base + 3000, base + 3300, base + 3600, base + 3900}
	if len(series.starts) != len(want) {
		t.Fatalf("kept windows %v, want %v", series.starts, want)
	}
	for i := range want {
		if series.starts[i] != want[i] {
			t.Fatalf("kept windows %v, want %v", series.starts, want)
		}
	}
	var got []int64
	it := series.Iterator(nil)
	for it.Next() == chunkenc.ValFloat {
		at, _ := it.At()
		got = append(got, at/1000-base)
	}
	wantStamps := []int64{3000, 3020, 3300, 3320, 3600, 3620, 3900}
	if len(got) != len(wantStamps) {
		t.Fatalf("samples at %v, want %v", got, wantStamps)
	}
	for i := range got {
		if got[i] != wantStamps[i] {
			t.Fatalf("samples at %v, want %v", got, wantStamps)
		}
	}
}

func TestASegmentWhoseLengthsDisagreeIsABadFrame(t *testing.T) {
	start := int64(1795334400)
	piece := segment([]int64{start}, [][]byte{encodeWindow(start, []int64{start + 20}, []int64{1})})
	binary.LittleEndian.PutUint32(piece[4:], 99) // data bytes no longer the blobs' sum
	frame := append(segmentsHead(0, math.MaxInt64, 1), piece...)
	frame = append(frame, make([]byte, 99)...)
	if _, err := (&frameDecoder{r: bufio.NewReader(bytes.NewReader(frame))}).segments(labels.EmptyLabels()); err == nil {
		t.Fatal("a segment whose lengths do not add up was read")
	}
}

// A block of windows the store clipped (pointsPacked) reads as one segment would, all kept.
func TestAPackedBlockReadsLikeOneSegment(t *testing.T) {
	base := int64(1795334400)
	var starts []int64
	var blobs [][]byte
	for w := int64(0); w < 4; w++ {
		start := base + 300*w
		starts = append(starts, start)
		blobs = append(blobs, encodeWindow(start, []int64{start + 20, start + 300}, []int64{w, -w}))
	}
	mint, maxt := base*1000, (base+1200)*1000
	body := segment(starts, blobs)
	// A packed head is a segments head without the segment count: the segment follows.
	packed := append(segmentsHead(mint, maxt, 1)[:28], body...)
	asSegment := append(segmentsHead(mint, maxt, 1), body...)
	got, err := (&frameDecoder{r: bufio.NewReader(bytes.NewReader(packed))}).packed(labels.EmptyLabels())
	if err != nil {
		t.Fatal(err)
	}
	want, err := (&frameDecoder{r: bufio.NewReader(bytes.NewReader(asSegment))}).segments(labels.EmptyLabels())
	if err != nil {
		t.Fatal(err)
	}
	if len(got.starts) != 4 || !bytes.Equal(got.data, want.data) || len(got.ends) != len(want.ends) {
		t.Fatalf("packed read %v (%d bytes), as a segment %v (%d bytes)", got.starts,
			len(got.data), want.starts, len(want.data))
	}
	for i := range got.starts {
		if got.starts[i] != want.starts[i] || got.ends[i] != want.ends[i] {
			t.Fatalf("window %d: packed %d/%d, segment %d/%d", i, got.starts[i], got.ends[i],
				want.starts[i], want.ends[i])
		}
	}
	// Its lengths must add up to its data bytes, as a segment's.
	bad := append([]byte(nil), packed...)
	binary.LittleEndian.PutUint32(bad[32:], uint32(len(bytes.Join(blobs, nil))+1))
	bad = append(bad, 0)
	if _, err := (&frameDecoder{r: bufio.NewReader(bytes.NewReader(bad))}).packed(labels.EmptyLabels()); err == nil {
		t.Fatal("a packed block whose lengths do not add up was read")
	}
}
