package main

import (
	"bytes"
	"encoding/json"
	"math"
	"math/rand"
	"testing"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql"
)

// The matrix written directly is byte for byte what encoding/json wrote through
// promql.FPoint's MarshalJSON.
func TestMatrixAnswerEqualsTheGenericEncoding(t *testing.T) {
	rng := rand.New(rand.NewSource(3))
	values := []float64{0, -0.5, 30.17, 1e-7, -3e21, 1e22, math.Inf(1), math.Inf(-1), math.NaN(),
		123456789.123456789, 0.1 + 0.2}
	stamps := []int64{0, -1500, 1795334400000, 1795334400123, 1795334400007, 999, 5e15}
	var matrix promql.Matrix
	for s := 0; s < 5; s++ {
		series := promql.Series{Metric: labels.FromStrings("__name__", "m", "vm", "a<b>&\"c\"",
			"org", "é\u2028")}
		for i := 0; i < 40; i++ {
			series.Floats = append(series.Floats, promql.FPoint{
				T: stamps[rng.Intn(len(stamps))], F: values[rng.Intn(len(values))]})
		}
		matrix = append(matrix, series)
	}
	matrix = append(matrix, promql.Series{Metric: labels.FromStrings("__name__", "empty")})
	for _, q := range []queryData{{"matrix", matrix}, {"matrix", promql.Matrix{}},
		{"vector", promql.Vector{{Metric: labels.FromStrings("a", "b"), T: 1000, F: 2}}}} {
		type plain queryData
		want, err := json.Marshal(map[string]any{"data": plain(q)})
		if err != nil {
			t.Fatal(err)
		}
		got, err := json.Marshal(map[string]any{"data": q})
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("differs:\n got %s\nwant %s", got, want)
		}
	}
}

func BenchmarkOneVMAnswer(b *testing.B) {
	var matrix promql.Matrix
	for s := 0; s < 10; s++ {
		series := promql.Series{Metric: labels.FromStrings("__name__", "m", "vm", "urn:vcloud:vm:x")}
		for i := 0; i < 1441; i++ {
			series.Floats = append(series.Floats, promql.FPoint{T: int64(1795334400000 + 60000*i),
				F: float64(i%10000) * 0.01})
		}
		matrix = append(matrix, series)
	}
	for i := 0; i < b.N; i++ {
		_, _ = json.Marshal(map[string]any{"data": queryData{"matrix", matrix}})
	}
}
