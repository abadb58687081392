package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/util/annotations"
)

// benchFleet is the read bench's org sum: 1,000 series of 24 h of 20-s samples, packed.
func benchFleet(series, windows int) ([]*packedSeries, int64) {
	base := int64(1795334400)
	out := make([]*packedSeries, series)
	stamps := make([]int64, 15)
	values := make([]int64, 15)
	for n := range out {
		s := &packedSeries{scale: 0.01, mint: base * 1000, maxt: (base + int64(300*windows)) * 1000,
			lset: labels.FromStrings("__name__", "cpu", "vm", fmt.Sprintf("vm-%04d", n))}
		for w := 0; w < windows; w++ {
			start := base + int64(300*w)
			for i := range stamps {
				stamps[i] = start + int64(20*(i+1))
				values[i] = int64((n*7 + w*13 + i*3) % 10000)
			}
			s.starts = append(s.starts, start)
			s.data = append(s.data, encodeWindow(start, stamps, values)...)
			s.ends = append(s.ends, uint32(len(s.data)))
		}
		out[n] = s
	}
	return out, base
}

func BenchmarkCheck(b *testing.B) {
	fleet, _ := benchFleet(1000, 288)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for _, s := range fleet {
			if _, err := s.check(nil); err != nil {
				b.Fatal(err)
			}
		}
	}
}

func BenchmarkOrgSum(b *testing.B) {
	benchmarkRange(b, 288, "sum(cpu)", time.Hour, 23*time.Hour, 5*time.Minute)
}

// The read bench's topk over the last hour: 1,000 series of 70 minutes (with the lookback).
func BenchmarkTopkHour(b *testing.B) {
	benchmarkRange(b, 14, "topk(10, cpu)", 10*time.Minute, time.Hour, time.Minute)
}

func benchmarkRange(b *testing.B, windows int, expr string, from, length, step time.Duration) {
	fleet, base := benchFleet(1000, windows)
	for _, s := range fleet {
		if _, err := s.check(nil); err != nil {
			b.Fatal(err)
		}
	}
	engine := promql.NewEngine(promql.EngineOpts{MaxSamples: 50000000, Timeout: time.Minute,
		LookbackDelta: 10 * time.Minute, Parser: parser.NewParser(parser.Options{})})
	queryable := storage.QueryableFunc(func(mint, maxt int64) (storage.Querier, error) {
		return fleetQuerier{fleet}, nil
	})
	start := time.Unix(base, 0).Add(from)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		query, err := engine.NewRangeQuery(context.Background(), queryable, nil, expr,
			start, start.Add(length), step)
		if err != nil {
			b.Fatal(err)
		}
		if result := query.Exec(context.Background()); result.Err != nil {
			b.Fatal(result.Err)
		}
		query.Close()
	}
}

type fleetQuerier struct{ fleet []*packedSeries }

func (q fleetQuerier) Select(context.Context, bool, *storage.SelectHints, ...*labels.Matcher) storage.SeriesSet {
	series := make([]storage.Series, len(q.fleet))
	for i, s := range q.fleet {
		series[i] = s
	}
	return &listSet{series: series, index: -1}
}

func (fleetQuerier) LabelValues(context.Context, string, *storage.LabelHints, ...*labels.Matcher) ([]string, annotations.Annotations, error) {
	return nil, nil, nil
}

func (fleetQuerier) LabelNames(context.Context, *storage.LabelHints, ...*labels.Matcher) ([]string, annotations.Annotations, error) {
	return nil, nil, nil
}

func (fleetQuerier) Close() error { return nil }

// The frame of the read bench's topk over the last hour as the store sends it from memory:
// 1,000 series of 8 labels, each two hour pieces of 12 windows.
func BenchmarkDecodeFrame(b *testing.B) {
	base := int64(1795334400)
	frame := []byte(frameMagic)
	for n := 0; n < 1000; n++ {
		frame = binary.LittleEndian.AppendUint32(frame, 8)
		for _, label := range [][2]string{{"__name__", "vsphere_vm_cpu_usage_average_percent"},
			{"vm", fmt.Sprintf("urn:vcloud:vm:%08d-0000-0000-0000-000000000000", n)},
			{"vm_name", fmt.Sprintf("vm-%04d", n)}, {"vapp", "vapp-1"}, {"vdc", "vdc-1"},
			{"org", "org-01"}, {"vcenter", "vc1"}, {"moref", fmt.Sprintf("vm-%d", n)}} {
			frame = binary.LittleEndian.AppendUint16(frame, uint16(len(label[0])))
			frame = append(frame, label[0]...)
			frame = binary.LittleEndian.AppendUint32(frame, uint32(len(label[1])))
			frame = append(frame, label[1]...)
		}
		frame = binary.LittleEndian.AppendUint32(frame, pointsSegments)
		frame = append(frame, segmentsHead((base+1800)*1000, (base+5400)*1000, 2)...)
		for hour := int64(0); hour < 2; hour++ {
			var starts []int64
			var blobs [][]byte
			for w := int64(0); w < 12; w++ {
				start := base + 3600*hour + 300*w
				stamps, values := make([]int64, 15), make([]int64, 15)
				for i := range stamps {
					stamps[i], values[i] = start+int64(20*(i+1)), int64((n+i)%10000)
				}
				starts, blobs = append(starts, start), append(blobs, encodeWindow(start, stamps, values))
			}
			frame = append(frame, segment(starts, blobs)...)
		}
	}
	frame = binary.LittleEndian.AppendUint32(frame, markerEnd)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		series, err := decodeFrame(bufio.NewReaderSize(bytes.NewReader(frame), 1<<16))
		if err != nil || len(series) != 1000 {
			b.Fatal(err, len(series))
		}
	}
}
