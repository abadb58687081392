package main

// The storage side of the engine: a storage.Queryable whose Select asks the statsfeeder
// process that started us for the matching series (it reads them from Cassandra, limited to
// the caller's scope) and decodes its compact binary answer.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"sort"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
	"github.com/prometheus/prometheus/util/annotations"
)

// Frame markers after the magic: a series starts with its label count (< markerEnd).
const (
	frameMagic    = "SFS1"
	markerEnd     = 0xFFFFFFFF
	markerError   = 0xFFFFFFFE
	markerFailure = 0xFFFFFFFD
	// In a series' point count: the series' stored windows follow (packed.go), in one
	// block or as hour pieces (segments).
	pointsPacked   = 0xFFFFFFFF
	pointsSegments = 0xFFFFFFFC
)

type selectRequest struct {
	Start    int64         `json:"start"`
	End      int64         `json:"end"`
	Step     int64         `json:"step"`
	Range    int64         `json:"range"`
	Func     string        `json:"func"`
	Matchers []matcherJSON `json:"matchers"`
	Scope    string        `json:"scope"`
	Limit    int           `json:"limit"`
	Rollup   string        `json:"rollup,omitempty"`
}

type matcherJSON struct {
	Type  string `json:"type"`
	Name  string `json:"name"`
	Value string `json:"value"`
}

type remoteStore struct {
	url    string
	secret string
	client *http.Client
}

// queryable binds the store to one caller's scope: every Select of the query carries it.
func (s *remoteStore) queryable(scope string) storage.Queryable {
	return storage.QueryableFunc(func(mint, maxt int64) (storage.Querier, error) {
		return &remoteQuerier{store: s, scope: scope, mint: mint, maxt: maxt}, nil
	})
}

type remoteQuerier struct {
	store      *remoteStore
	scope      string
	mint, maxt int64
}

func (q *remoteQuerier) Select(ctx context.Context, _ bool, hints *storage.SelectHints,
	matchers ...*labels.Matcher) storage.SeriesSet {
	request := selectRequest{Start: q.mint, End: q.maxt, Scope: q.scope}
	if hints != nil {
		request.Start, request.End = hints.Start, hints.End
		request.Step, request.Range, request.Func = hints.Step, hints.Range, hints.Func
		request.Limit = hints.Limit
	}
	// The roll-up view the planner asked for (rollups.go) is no label of any series.
	kept := make([]*labels.Matcher, 0, len(matchers))
	for _, m := range matchers {
		if m.Name == rollupLabel {
			request.Rollup = m.Value
			continue
		}
		kept = append(kept, m)
	}
	matchers = kept
	for _, m := range matchers {
		request.Matchers = append(request.Matchers,
			matcherJSON{Type: m.Type.String(), Name: m.Name, Value: m.Value})
	}
	series, err := q.store.fetch(ctx, request)
	if err != nil {
		return storage.ErrSeriesSet(err)
	}
	// The store pre-filters with Python's regular expressions; the engine's own matchers
	// (RE2, fully anchored) decide.
	matching := series[:0]
	for _, s := range series {
		if matchesAll(s.Labels(), matchers) {
			matching = append(matching, s)
		}
	}
	sort.Slice(matching, func(i, j int) bool {
		return labels.Compare(matching[i].Labels(), matching[j].Labels()) < 0
	})
	return &listSet{series: matching, index: -1}
}

func matchesAll(lset labels.Labels, matchers []*labels.Matcher) bool {
	for _, m := range matchers {
		if !m.Matches(lset.Get(m.Name)) {
			return false
		}
	}
	return true
}

func (*remoteQuerier) LabelValues(context.Context, string, *storage.LabelHints,
	...*labels.Matcher) ([]string, annotations.Annotations, error) {
	return nil, nil, nil // the engine never asks during evaluation; the label API selects
}

func (*remoteQuerier) LabelNames(context.Context, *storage.LabelHints,
	...*labels.Matcher) ([]string, annotations.Annotations, error) {
	return nil, nil, nil
}

func (*remoteQuerier) Close() error { return nil }

// storeError is a refusal the store explained (a limit): shown to the caller as it is.
type storeError struct{ message string }

func (e storeError) Error() string { return e.message }

// storageFailure is the store failing (Cassandra unreachable): Prometheus's "internal".
type storageFailure struct{ message string }

func (e storageFailure) Error() string { return e.message }

// post sends request as JSON to url with the process's secret; the caller closes the body
// of the response it gets, which answered 200 (anything else is the store's failure, or with
// unprocessable, a storeError carrying the store's one line).
func (s *remoteStore) post(ctx context.Context, url string, request any, unprocessable bool) (*http.Response, error) {
	body, err := json.Marshal(request)
	if err != nil {
		return nil, err
	}
	httpRequest, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	httpRequest.Header.Set("Content-Type", "application/json")
	httpRequest.Header.Set(secretHeader, s.secret)
	response, err := s.client.Do(httpRequest)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, storageFailure{fmt.Sprintf("storage: %v", err)}
	}
	if response.StatusCode != http.StatusOK {
		defer response.Body.Close()
		text, _ := io.ReadAll(io.LimitReader(response.Body, 4096))
		if unprocessable && response.StatusCode == http.StatusUnprocessableEntity {
			return nil, storeError{string(bytes.TrimSpace(text))}
		}
		return nil, storageFailure{fmt.Sprintf("storage: %s", bytes.TrimSpace(text))}
	}
	return response, nil
}

func (s *remoteStore) fetch(ctx context.Context, request selectRequest) ([]storage.Series, error) {
	response, err := s.post(ctx, s.url, request, false)
	if err != nil {
		return nil, err
	}
	defer response.Body.Close()
	return decodeFrame(bufio.NewReaderSize(response.Body, 1<<16))
}

// decodeFrame reads "SFS1", then per series: u32 label count, per label u16-length-prefixed
// name and u32-length-prefixed value, u32 point count, the int64 timestamps (ms), the float64
// values; or, for a point count of pointsPacked or pointsSegments, the stored windows
// (frameDecoder.packed, .segments). A u32
// markerEnd closes the frame; markerError (a limit) or markerFailure (the store failed
// midway) + a u32-prefixed message aborts it. All little-endian. The frame is read as it
// arrives: the store sends each series once it is read.
func decodeFrame(r *bufio.Reader) ([]storage.Series, error) {
	magic := make([]byte, 4)
	if _, err := io.ReadFull(r, magic); err != nil || string(magic) != frameMagic {
		return nil, errors.New("storage: bad frame")
	}
	d := &frameDecoder{r: r}
	var out []storage.Series
	for {
		count, err := readU32(r)
		if err != nil {
			return nil, err
		}
		switch count {
		case markerEnd:
			return out, nil
		case markerError:
			message, err := readBytes(r, 4)
			if err != nil {
				return nil, err
			}
			return nil, storeError{string(message)}
		case markerFailure:
			message, err := readBytes(r, 4)
			if err != nil {
				return nil, err
			}
			return nil, storageFailure{fmt.Sprintf("storage: %s", message)}
		}
		lset, err := d.labels(int(count))
		if err != nil {
			return nil, err
		}
		points, err := readU32(r)
		if err != nil {
			return nil, err
		}
		if points == pointsPacked || points == pointsSegments {
			read := d.packed
			if points == pointsSegments {
				read = d.segments
			}
			series, err := read(lset)
			if err != nil {
				return nil, err
			}
			out = append(out, series)
			continue
		}
		raw := make([]byte, 16*int(points))
		if _, err := io.ReadFull(r, raw); err != nil {
			return nil, fmt.Errorf("storage: truncated frame: %w", err)
		}
		series := &memSeries{lset: lset, floats: make([]promql.FPoint, points)}
		for i := 0; i < int(points); i++ {
			series.floats[i] = promql.FPoint{T: int64(binary.LittleEndian.Uint64(raw[8*i:])),
				F: math.Float64frombits(binary.LittleEndian.Uint64(raw[8*(int(points)+i):]))}
		}
		out = append(out, series)
	}
}

// frameDecoder reads one frame's series with buffers reused from series to series: a
// query's thousands of series would otherwise cost dozens of allocations each.
type frameDecoder struct {
	r       *bufio.Reader
	scratch []byte
	bounds  []int
	builder labels.ScratchBuilder
	samples []floatSample // check's
	starts  []int64       // a series' kept windows, until copied out
	ends    []uint32
	data    []byte
	total   uint64 // a series' window bytes read, against a bound
}

// labels reads a series' count labels: their bytes into one string, the names and values
// substrings of it, sorted into one Labels.
func (d *frameDecoder) labels(count int) (labels.Labels, error) {
	d.scratch, d.bounds = d.scratch[:0], d.bounds[:0]
	for i := 0; i < 2*count; i++ {
		var err error
		// A u16-length name, then a u32-length value.
		if d.scratch, err = appendPrefixed(d.r, 2+2*(i%2), d.scratch); err != nil {
			return labels.EmptyLabels(), err
		}
		d.bounds = append(d.bounds, len(d.scratch))
	}
	all := string(d.scratch)
	d.builder.Reset()
	begin := 0
	for i := 0; i < count; i++ {
		name, end := all[begin:d.bounds[2*i]], d.bounds[2*i+1]
		d.builder.Add(name, all[d.bounds[2*i]:end])
		begin = end
	}
	d.builder.Sort()
	return d.builder.Labels(), nil
}

func readU32(r *bufio.Reader) (uint32, error) {
	n, err := readUint(r, 4)
	return uint32(n), err
}

// readUint reads a little-endian unsigned integer of size bytes (at most 4) byte by byte: a
// local array handed to io.ReadFull would be an allocation per call.
func readUint(r *bufio.Reader, size int) (int, error) {
	n := 0
	for i := 0; i < size; i++ {
		b, err := r.ReadByte()
		if err != nil {
			return 0, fmt.Errorf("storage: truncated frame: %w", err)
		}
		n |= int(b) << (8 * i)
	}
	return n, nil
}

func readBytes(r *bufio.Reader, prefix int) ([]byte, error) {
	return appendPrefixed(r, prefix, nil)
}

// appendPrefixed appends to dst the bytes that follow their little-endian u16 (prefix 2)
// or u32 (prefix 4) length, at most 16 MiB.
func appendPrefixed(r *bufio.Reader, prefix int, dst []byte) ([]byte, error) {
	n, err := readUint(r, prefix)
	if err != nil {
		return dst, err
	}
	if n > 1<<24 {
		return dst, errors.New("storage: bad frame")
	}
	at := len(dst)
	dst = append(dst, make([]byte, n)...)
	if _, err := io.ReadFull(r, dst[at:]); err != nil {
		return dst, fmt.Errorf("storage: truncated frame: %w", err)
	}
	return dst, nil
}

// memSeries is one decoded series: timestamps ascending, in milliseconds. Its iterator is
// Prometheus's own (promql.StorageSeries).
type memSeries struct {
	lset   labels.Labels
	floats []promql.FPoint
}

func (s *memSeries) Labels() labels.Labels { return s.lset }

func (s *memSeries) Iterator(it chunkenc.Iterator) chunkenc.Iterator {
	return promql.NewStorageSeries(promql.Series{Metric: s.lset, Floats: s.floats}).Iterator(it)
}

type listSet struct {
	series []storage.Series
	index  int
}

func (s *listSet) Next() bool {
	s.index++
	return s.index < len(s.series)
}

func (s *listSet) At() storage.Series              { return s.series[s.index] }
func (*listSet) Err() error                        { return nil }
func (*listSet) Warnings() annotations.Annotations { return nil }
