package main

// Reading a packed series from the store's frame (decodeFrame, storage.go): its stored
// windows in one block (readPacked) or as hour pieces (readSegments), checked as read.

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"

	"github.com/prometheus/prometheus/model/labels"
)

// readHead reads the size bytes after a packed series' marker, which begin with its f64
// scale and i64 first and last timestamp kept (ms).
func readHead(r *bufio.Reader, lset labels.Labels, size int) (*packedSeries, []byte, error) {
	head := make([]byte, size)
	if _, err := io.ReadFull(r, head); err != nil {
		return nil, nil, fmt.Errorf("storage: truncated frame: %w", err)
	}
	return &packedSeries{lset: lset,
		scale: math.Float64frombits(binary.LittleEndian.Uint64(head[0:])),
		mint:  int64(binary.LittleEndian.Uint64(head[8:])),
		maxt:  int64(binary.LittleEndian.Uint64(head[16:]))}, head, nil
}

// readPacked reads a packed series after its marker: f64 scale, i64 first and last
// timestamp kept (ms), u32 samples in that range, u32 windows, u32 data bytes, the windows'
// i64 starts (s), their u32 lengths, then their blobs one after another.
func readPacked(r *bufio.Reader, lset labels.Labels) (*packedSeries, error) {
	series, head, err := readHead(r, lset, 36)
	if err != nil {
		return nil, err
	}
	windows := int(binary.LittleEndian.Uint32(head[28:]))
	size := int(binary.LittleEndian.Uint32(head[32:]))
	if uint64(windows)*12+uint64(size) > 1<<34 {
		return nil, errors.New("storage: bad frame")
	}
	raw := make([]byte, 12*windows)
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
	if err := series.check(); err != nil {
		return nil, err
	}
	return series, nil
}

// readSegments reads a series sent as hour pieces after its marker: f64 scale, i64 first
// and last timestamp kept (ms), u32 samples in that range, u32 segments; per segment u32
// windows, u32 data bytes, the windows' i64 starts (s), their u32 lengths, their blobs.
// Windows that cannot hold a sample in range (the pieces are whole hours) are dropped.
func readSegments(r *bufio.Reader, lset labels.Labels) (*packedSeries, error) {
	series, head, err := readHead(r, lset, 32)
	if err != nil {
		return nil, err
	}
	first, last := series.mint/1000-windowSeconds, series.maxt/1000
	segments := int(binary.LittleEndian.Uint32(head[28:]))
	var total uint64
	for n := 0; n < segments; n++ {
		var sizes [8]byte
		if _, err := io.ReadFull(r, sizes[:]); err != nil {
			return nil, fmt.Errorf("storage: truncated frame: %w", err)
		}
		windows := int(binary.LittleEndian.Uint32(sizes[0:]))
		size := int(binary.LittleEndian.Uint32(sizes[4:]))
		if total += uint64(windows)*12 + uint64(size); total > 1<<34 {
			return nil, errors.New("storage: bad frame")
		}
		raw := make([]byte, 12*windows+size)
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
				series.starts = append(series.starts, start)
				series.data = append(series.data, blobs[offset:offset+length]...)
				series.ends = append(series.ends, uint32(len(series.data)))
			}
			offset += length
		}
		if int(offset) != size {
			return nil, errors.New("storage: bad frame")
		}
	}
	if err := series.check(); err != nil {
		return nil, err
	}
	return series, nil
}
