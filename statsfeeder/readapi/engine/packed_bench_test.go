package main

import (
	"context"
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
			if err := s.check(); err != nil {
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
		if err := s.check(); err != nil {
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
