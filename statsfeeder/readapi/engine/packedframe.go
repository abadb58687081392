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
// timestamp kept (ms), u32 samples in that range, u32 windows, u32 data bytes, the windows'
// i64 starts (s), their u32 lengths, then their blobs one after another.
func (d *frameDecoder) packed(lset labels.Labels) (*packedSeries, error) {
	r := d.r
	series, head, err := d.head(lset, 36)
	if err != nil {
		return nil, err
	}
	windows := int(binary.LittleEndian.Uint32(head[28:]))
	size := int(binary.LittleEndian.Uint32(head[32:]))
	if uint64(windows)*12+uint64(size) > 1<<34 {
		return nil, errors.New("storage: bad frame")
	}
	d.scratch = append(d.scratch[:0], make([]byte, 12*windows)...)
	raw := d.scratch
	if _, err := io.ReadFull(r, raw); err != nil {
		return nil, fmt.Errorf("storage: truncated frame: %w", err)
	}
	series.starts = make([]int64, windows)
	series.ends = make([]uint32, windows)
	end := uint32(0)
	for i := 0; i < windows; i++ {
		series.starts[i] = int64(binary.LittleEndian.Uint64(raw[8*i:]))
		end += binary.LittleEndian.Uint32(raw[8*windows+4*i:])
		series.ends[i] = end
	}
	if int(end) != size {
		return nil, errors.New("storage: bad frame")
	}
	series.data = make([]byte, size)
	if _, err := io.ReadFull(r, series.data); err != nil {
		return nil, fmt.Errorf("storage: truncated frame: %w", err)
	}
	if d.samples, err = series.check(d.samples); err != nil {
		return nil, err
	}
	return series, nil
}

// segments reads a series sent as hour pieces after its marker: f64 scale, i64 first
// and last timestamp kept (ms), u32 samples in that range, u32 segments; per segment u32
// windows, u32 data bytes, the windows' i64 starts (s), their u32 lengths, their blobs.
// Windows that cannot hold a sample in range (the pieces are whole hours) are dropped.
func (d *frameDecoder) segments(lset labels.Labels) (*packedSeries, error) {
	r := d.r
	series, head, err := d.head(lset, 32)
	if err != nil {
		return nil, err
	}
	first, last := series.mint/1000-windowSeconds, series.maxt/1000
	segments := int(binary.LittleEndian.Uint32(head[28:]))
	d.starts, d.ends, d.data = d.starts[:0], d.ends[:0], d.data[:0]
	var total uint64
	for n := 0; n < segments; n++ {
		sizes := d.word[:8]
		if _, err := io.ReadFull(r, sizes); err != nil {
			return nil, fmt.Errorf("storage: truncated frame: %w", err)
		}
		windows := int(binary.LittleEndian.Uint32(sizes[0:]))
		size := int(binary.LittleEndian.Uint32(sizes[4:]))
		if total += uint64(windows)*12 + uint64(size); total > 1<<34 {
			return nil, errors.New("storage: bad frame")
		}
		d.scratch = append(d.scratch[:0], make([]byte, 12*windows+size)...)
		raw := d.scratch
		if _, err := io.ReadFull(r, raw); err != nil {
			return nil, fmt.Errorf("storage: truncated frame: %w", err)
		}
		blobs := raw[12*windows:]
		offset := uint32(0)
		for i := 0; i < windows; i++ {
			start := int64(binary.LittleEndian.Uint64(raw[8*i:]))
			length := binary.LittleEndian.Uint32(raw[8*windows+4*i:])
			if uint64(offset)+uint64(length) > uint64(size) {
				return nil, errors.New("storage: bad frame")
			}
			if start >= first && start <= last {
				d.starts = append(d.starts, start)
				d.data = append(d.data, blobs[offset:offset+length]...)
				d.ends = append(d.ends, uint32(len(d.data)))
			}
			offset += length
		}
		if int(offset) != size {
			return nil, errors.New("storage: bad frame")
		}
	}
	// Sized copies: the decoder's buffers serve the next series.
	series.starts = append([]int64(nil), d.starts...)
	series.ends = append([]uint32(nil), d.ends...)
	series.data = append([]byte(nil), d.data...)
	if d.samples, err = series.check(d.samples); err != nil {
		return nil, err
	}
	return series, nil
}
