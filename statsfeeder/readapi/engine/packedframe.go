package main

// Reading a packed series from the store's frame (decodeFrame, storage.go): its stored
// windows in one block (packed) or as hour pieces (segments), checked as read.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"

	"github.com/prometheus/prometheus/model/labels"
)

// head reads the size bytes after a packed series' marker, which begin with its f64 scale
// and i64 first and last timestamp kept (ms), into the decoder's scratch.
func (d *frameDecoder) head(lset labels.Labels, size int) (*packedSeries, []byte, error) {
	d.scratch = append(d.scratch[:0], make([]byte, size)...)
	head := d.scratch
	if _, err := io.ReadFull(d.r, head); err != nil {
		return nil, nil, fmt.Errorf("storage: truncated frame: %w", err)
	}
	return &packedSeries{lset: lset,
		scale: math.Float64frombits(binary.LittleEndian.Uint64(head[0:])),
		mint:  int64(binary.LittleEndian.Uint64(head[8:])),
		maxt:  int64(binary.LittleEndian.Uint64(head[16:]))}, head, nil
}

// packed reads a packed series after its marker: f64 scale, i64 first and last
// timestamp kept (ms), u32 samples in that range, then its windows as one segment would
// hold them (u32 windows, u32 data bytes, ...).
func (d *frameDecoder) packed(lset labels.Labels) (*packedSeries, error) {
	series, head, err := d.head(lset, 36)
	if err != nil {
		return nil, err
	}
	windows := int(binary.LittleEndian.Uint32(head[28:]))
	size := int(binary.LittleEndian.Uint32(head[32:]))
	d.starts, d.ends, d.data, d.total = d.starts[:0], d.ends[:0], d.data[:0], 0
	if err := d.windows(series, windows, size); err != nil {
		return nil, err
	}
	return d.finish(series)
}

// segments reads a series sent as hour pieces after its marker: f64 scale, i64 first
// and last timestamp kept (ms), u32 samples in that range, u32 segments; per segment u32
// windows, u32 data bytes, then its windows.
func (d *frameDecoder) segments(lset labels.Labels) (*packedSeries, error) {
	series, head, err := d.head(lset, 32)
	if err != nil {
		return nil, err
	}
	segments := int(binary.LittleEndian.Uint32(head[28:]))
	d.starts, d.ends, d.data, d.total = d.starts[:0], d.ends[:0], d.data[:0], 0
	for n := 0; n < segments; n++ {
		windows, err := readU32(d.r)
		if err != nil {
			return nil, err
		}
		size, err := readU32(d.r)
		if err != nil {
			return nil, err
		}
		if err := d.windows(series, int(windows), int(size)); err != nil {
			return nil, err
		}
	}
	return d.finish(series)
}

// windows reads windows i64 starts (s), their u32 lengths, then their blobs (size bytes in
// all), keeping those that may hold a sample in the series' range (hour pieces are whole
// hours; a block the store clipped keeps all).
func (d *frameDecoder) windows(series *packedSeries, windows, size int) error {
	if d.total += uint64(windows)*12 + uint64(size); d.total > 1<<34 {
		return errors.New("storage: bad frame")
	}
	d.scratch = append(d.scratch[:0], make([]byte, 12*windows+size)...)
	raw := d.scratch
	if _, err := io.ReadFull(d.r, raw); err != nil {
		return fmt.Errorf("storage: truncated frame: %w", err)
	}
	first, last := series.mint/1000-windowSeconds, series.maxt/1000
	blobs := raw[12*windows:]
	offset := uint32(0)
	for i := 0; i < windows; i++ {
		start := int64(binary.LittleEndian.Uint64(raw[8*i:]))
		length := binary.LittleEndian.Uint32(raw[8*windows+4*i:])
		if uint64(offset)+uint64(length) > uint64(size) {
			return errors.New("storage: bad frame")
		}
		if start >= first && start <= last {
			d.starts = append(d.starts, start)
			d.data = append(d.data, blobs[offset:offset+length]...)
			d.ends = append(d.ends, uint32(len(d.data)))
		}
		offset += length
	}
	if int(offset) != size {
		return errors.New("storage: bad frame")
	}
	return nil
}

// finish gives the series sized copies of the windows kept (the decoder's buffers serve
// the next series) and checks them.
func (d *frameDecoder) finish(series *packedSeries) (*packedSeries, error) {
	series.starts = append([]int64(nil), d.starts...)
	series.ends = append([]uint32(nil), d.ends...)
	series.data = append([]byte(nil), d.data...)
	var err error
	if d.samples, err = series.check(d.samples); err != nil {
		return nil, err
	}
	return series, nil
}
