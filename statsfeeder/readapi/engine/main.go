// statsfeeder-engine evaluates PromQL with Prometheus's own engine (the promql package) over
// the samples statsfeeder stores. It is a child of the statsfeeder read API: that process
// parses and checks the HTTP parameters, forwards queries here (loopback, with a per-process
// secret), and answers this engine's Selects from Cassandra, limited to the caller's scope.
package main

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/http"
	"os"
	"sort"
	"strconv"
	"time"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/util/annotations"
)

const secretHeader = "X-Statsfeeder-Secret"

type server struct {
	engine  *promql.Engine
	parser  parser.Parser
	store   *remoteStore
	secret  string
	timeout time.Duration
	rollups rollupPolicy
}

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on (loopback)")
	storageURL := flag.String("storage-url", "", "the statsfeeder process's select endpoint")
	lookback := flag.Duration("lookback", 10*time.Minute, "lookback delta of instant selectors")
	timeout := flag.Duration("timeout", 2*time.Minute, "longest query evaluation")
	maxSamples := flag.Int("max-samples", 50000000, "most samples one query may hold")
	maxSeries := flag.Uint64("max-series", 0, "most series one query may load (0: no cap)")
	rollups := flag.Bool("rollups", false, "answer whole-bucket range functions from roll-ups")
	rollupMinStep := flag.Duration("rollup-min-step", time.Hour, "smallest step read from roll-ups")
	rollupFresh := flag.Duration("rollup-fresh", 0, "buckets this new are folded from raw by the store")
	flag.Parse()
	secret := os.Getenv("STATSFEEDER_ENGINE_SECRET")
	if secret == "" || *storageURL == "" {
		fmt.Fprintln(os.Stderr, "statsfeeder-engine: STATSFEEDER_ENGINE_SECRET and -storage-url are required")
		os.Exit(2)
	}
	promParser := parser.NewParser(parser.Options{})
	engine := promql.NewEngine(promql.EngineOpts{
		Logger:               slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
		MaxSamples:           *maxSamples,
		Timeout:              *timeout,
		LookbackDelta:        *lookback,
		EnableAtModifier:     true,
		EnableNegativeOffset: true,
		// Prometheus's default evaluation interval: a subquery without a step uses it.
		NoStepSubqueryIntervalFn: func(int64) int64 { return 60 * 1000 },
		Parser:                   promParser,
	})
	engine.SetQueryLimits(*maxSeries, 0, 0)
	s := &server{engine: engine, parser: promParser, secret: secret, timeout: *timeout,
		rollups: rollupPolicy{enabled: *rollups, minStep: *rollupMinStep, fresh: *rollupFresh,
			now: time.Now},
		store: &remoteStore{url: *storageURL, secret: secret, client: &http.Client{}}}
	listener, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintf(os.Stderr, "statsfeeder-engine: %v\n", err)
		os.Exit(2)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/query", s.guard(s.query))
	mux.HandleFunc("/query_range", s.guard(s.queryRange))
	mux.HandleFunc("/series", s.guard(s.series))
	mux.HandleFunc("/labels", s.guard(s.labelNames))
	mux.HandleFunc("/label_values", s.guard(s.labelValues))
	// The parent reads this line to learn the port.
	fmt.Printf("listening %s\n", listener.Addr())
	os.Stdout.Sync()
	if err := http.Serve(listener, mux); err != nil {
		fmt.Fprintf(os.Stderr, "statsfeeder-engine: %v\n", err)
		os.Exit(1)
	}
}

type apiError struct {
	kind    string
	status  int
	message string
}

func badData(message string) *apiError {
	return &apiError{"bad_data", http.StatusBadRequest, message}
}

// classify follows the Prometheus HTTP API's mapping of engine errors to types and codes.
func classify(err error) *apiError {
	var canceled promql.ErrQueryCanceled
	var timeout promql.ErrQueryTimeout
	var tooManySeries promql.ErrTooManySeries
	var tooManyRead promql.ErrTooManySamplesRead
	var storageErr promql.ErrStorage
	var refused storeError
	var failed storageFailure
	switch {
	case errors.As(err, &canceled), errors.Is(err, context.Canceled):
		return &apiError{"canceled", 499, err.Error()}
	case errors.As(err, &timeout), errors.Is(err, context.DeadlineExceeded):
		return &apiError{"timeout", http.StatusServiceUnavailable, err.Error()}
	case errors.As(err, &tooManySeries), errors.As(err, &tooManyRead):
		return &apiError{"execution", http.StatusUnprocessableEntity, err.Error()}
	case errors.As(err, &refused):
		return &apiError{"execution", http.StatusUnprocessableEntity, refused.message}
	case errors.As(err, &storageErr), errors.As(err, &failed):
		return &apiError{"internal", http.StatusInternalServerError, err.Error()}
	}
	return &apiError{"execution", http.StatusUnprocessableEntity, err.Error()}
}

func (s *server) guard(handler func(*http.Request) (any, annotations.Annotations, string, *apiError)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		given := r.Header.Get(secretHeader)
		if subtle.ConstantTimeCompare([]byte(given), []byte(s.secret)) != 1 {
			http.Error(w, "forbidden", http.StatusForbidden)
			return
		}
		if err := r.ParseForm(); err != nil {
			writeJSON(w, http.StatusBadRequest, map[string]any{"status": "error",
				"errorType": "bad_data", "error": "error parsing form values: " + err.Error()})
			return
		}
		data, notes, query, failure := handler(r)
		body := map[string]any{"status": "success"}
		status := http.StatusOK
		if failure != nil {
			body = map[string]any{"status": "error", "errorType": failure.kind,
				"error": failure.message}
			status = failure.status
		} else {
			body["data"] = data
		}
		if len(notes) > 0 {
			warnings, infos := notes.AsStrings(query, 10, 10)
			if len(warnings) > 0 {
				body["warnings"] = warnings
			}
			if len(infos) > 0 {
				body["infos"] = infos
			}
		}
		writeJSON(w, status, body)
	}
}

func writeJSON(w http.ResponseWriter, status int, body any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(body)
}

// seconds parses the parent's already-validated Unix seconds.
func seconds(r *http.Request, name string) (time.Time, error) {
	value, err := strconv.ParseFloat(r.FormValue(name), 64)
	if err != nil || math.IsNaN(value) {
		return time.Time{}, fmt.Errorf("internal: parameter %s=%q", name, r.FormValue(name))
	}
	whole, fraction := math.Modf(value)
	return time.Unix(int64(whole), int64(math.Round(fraction*1000))*int64(time.Millisecond)).UTC(), nil
}

func (s *server) context(r *http.Request) (context.Context, context.CancelFunc) {
	timeout := s.timeout
	if value, err := strconv.ParseFloat(r.FormValue("timeout"), 64); err == nil && value > 0 {
		if given := time.Duration(value * float64(time.Second)); given < timeout {
			timeout = given
		}
	}
	return context.WithTimeout(r.Context(), timeout)
}

// queryOpts carries the request's lookback_delta (seconds, checked by the parent); none or
// zero leaves the engine's configured lookback.
func queryOpts(r *http.Request) promql.QueryOpts {
	value, err := strconv.ParseFloat(r.FormValue("lookback_delta"), 64)
	if err != nil || math.IsNaN(value) {
		return nil
	}
	return promql.NewPrometheusQueryOpts(false, time.Duration(value*float64(time.Second)), nil)
}

type queryData struct {
	ResultType parser.ValueType `json:"resultType"`
	Result     any              `json:"result"`
}

func (s *server) run(r *http.Request, build func(context.Context, storage.Queryable) (promql.Query, error)) (any, annotations.Annotations, string, *apiError) {
	ctx, cancel := s.context(r)
	defer cancel()
	text := r.FormValue("query")
	query, err := build(ctx, s.store.queryable(r.FormValue("scope")))
	if err != nil {
		var timeout promql.ErrQueryTimeout
		var canceled promql.ErrQueryCanceled
		if errors.As(err, &timeout) || errors.As(err, &canceled) {
			return nil, nil, text, classify(err)
		}
		return nil, nil, text, badData(fmt.Sprintf("invalid parameter %q: %v", "query", err))
	}
	defer query.Close()
	result := query.Exec(ctx)
	if result.Err != nil {
		return nil, result.Warnings, text, classify(result.Err)
	}
	value, notes := result.Value, result.Warnings
	// An empty result is [], never null, as Prometheus answers. A limit keeps the first
	// series of a vector or matrix, in the engine's order, with Prometheus's warning.
	limit := limitOf(r)
	switch v := value.(type) {
	case promql.Matrix:
		if v == nil {
			value = promql.Matrix{}
		} else if limit > 0 && len(v) > limit {
			value = v[:limit]
			notes = notes.Add(errors.New("results truncated due to limit"))
		}
	case promql.Vector:
		if v == nil {
			value = promql.Vector{}
		} else if limit > 0 && len(v) > limit {
			value = v[:limit]
			notes = notes.Add(errors.New("results truncated due to limit"))
		}
	}
	return queryData{value.Type(), value}, notes, text, nil
}

func (s *server) query(r *http.Request) (any, annotations.Annotations, string, *apiError) {
	at, err := seconds(r, "time")
	if err != nil {
		return nil, nil, "", badData(err.Error())
	}
	return s.run(r, func(ctx context.Context, q storage.Queryable) (promql.Query, error) {
		text, err := s.rollups.planRollups(s.parser.ParseExpr, r.FormValue("query"), at, 0)
		if err != nil {
			return nil, err
		}
		return s.engine.NewInstantQuery(ctx, q, queryOpts(r), text, at)
	})
}

func (s *server) queryRange(r *http.Request) (any, annotations.Annotations, string, *apiError) {
	start, err := seconds(r, "start")
	if err != nil {
		return nil, nil, "", badData(err.Error())
	}
	end, err := seconds(r, "end")
	if err != nil {
		return nil, nil, "", badData(err.Error())
	}
	step, err := strconv.ParseFloat(r.FormValue("step"), 64)
	if err != nil || step <= 0 {
		return nil, nil, "", badData("internal: parameter step")
	}
	interval := time.Duration(step * float64(time.Second))
	return s.run(r, func(ctx context.Context, q storage.Queryable) (promql.Query, error) {
		text, err := s.rollups.planRollups(s.parser.ParseExpr, r.FormValue("query"), start,
			interval)
		if err != nil {
			return nil, err
		}
		return s.engine.NewRangeQuery(ctx, q, queryOpts(r), text, start, end, interval)
	})
}

// matcherSets parses match[] as Prometheus's metadata endpoints do; none: every series.
func (s *server) matcherSets(r *http.Request, required bool) ([][]*labels.Matcher, *apiError) {
	given := r.Form["match[]"]
	if len(given) == 0 && required {
		return nil, badData("no match[] parameter provided")
	}
	var sets [][]*labels.Matcher
	if len(given) == 0 {
		sets = [][]*labels.Matcher{{labels.MustNewMatcher(labels.MatchRegexp, "__name__", ".+")}}
	} else {
		parsed, err := s.parser.ParseMetricSelectors(given)
		if err != nil {
			return nil, badData(fmt.Sprintf("invalid parameter %q: %v", "match[]", err))
		}
		for _, set := range parsed {
			empty := true
			for _, m := range set {
				if m != nil && !m.Matches("") {
					empty = false
				}
			}
			if empty {
				return nil, badData(fmt.Sprintf("invalid parameter %q: %v", "match[]",
					"match[] must contain at least one non-empty matcher"))
			}
		}
		sets = parsed
	}
	return sets, nil
}

// matchersOverRange reads a metadata request's match[] sets and its start and end.
func (s *server) matchersOverRange(r *http.Request, required bool) ([][]*labels.Matcher, time.Time, time.Time, *apiError) {
	sets, failure := s.matcherSets(r, required)
	if failure != nil {
		return nil, time.Time{}, time.Time{}, failure
	}
	start, err := seconds(r, "start")
	if err != nil {
		return nil, time.Time{}, time.Time{}, badData(err.Error())
	}
	end, err := seconds(r, "end")
	if err != nil {
		return nil, time.Time{}, time.Time{}, badData(err.Error())
	}
	return sets, start, end, nil
}

// selectSets answers /series: the union of the series each match[] selects over
// [start, end], deduplicated and sorted.
func (s *server) selectSets(r *http.Request, required bool) ([]labels.Labels, *apiError) {
	sets, start, end, failure := s.matchersOverRange(r, required)
	if failure != nil {
		return nil, failure
	}
	ctx, cancel := s.context(r)
	defer cancel()
	querier, _ := s.store.queryable(r.FormValue("scope")).Querier(start.UnixMilli(), end.UnixMilli())
	seen := map[uint64]labels.Labels{}
	for _, set := range sets {
		hints := &storage.SelectHints{Start: start.UnixMilli(), End: end.UnixMilli(), Func: "series"}
		found := querier.Select(ctx, false, hints, set...)
		for found.Next() {
			lset := found.At().Labels()
			seen[lset.Hash()] = lset
		}
		if err := found.Err(); err != nil {
			return nil, classify(err)
		}
	}
	out := make([]labels.Labels, 0, len(seen))
	for _, lset := range seen {
		out = append(out, lset)
	}
	sort.Slice(out, func(i, j int) bool { return labels.Compare(out[i], out[j]) < 0 })
	return out, nil
}

func limitOf(r *http.Request) int {
	limit, err := strconv.Atoi(r.FormValue("limit"))
	if err != nil || limit < 0 {
		return 0
	}
	return limit
}

func truncated(count, limit int) annotations.Annotations {
	if limit > 0 && count > limit {
		return annotations.New().Add(errors.New("results truncated due to limit"))
	}
	return nil
}

func (s *server) series(r *http.Request) (any, annotations.Annotations, string, *apiError) {
	found, failure := s.selectSets(r, true)
	if failure != nil {
		return nil, nil, "", failure
	}
	notes := truncated(len(found), limitOf(r))
	if notes != nil {
		found = found[:limitOf(r)]
	}
	return found, notes, "", nil
}

func (s *server) labelNames(r *http.Request) (any, annotations.Annotations, string, *apiError) {
	names, failure := s.labelsFromStore(r, "")
	if failure != nil {
		return nil, nil, "", failure
	}
	return sortedLimited(names, limitOf(r))
}

func (s *server) labelValues(r *http.Request) (any, annotations.Annotations, string, *apiError) {
	values, failure := s.labelsFromStore(r, r.FormValue("name"))
	if failure != nil {
		return nil, nil, "", failure
	}
	return sortedLimited(values, limitOf(r))
}

func sortedLimited(set map[string]struct{}, limit int) (any, annotations.Annotations, string, *apiError) {
	out := make([]string, 0, len(set))
	for item := range set {
		out = append(out, item)
	}
	sort.Strings(out)
	notes := truncated(len(out), limit)
	if notes != nil {
		out = out[:limit]
	}
	return out, notes, "", nil
}
