package main

// Roll-up planning: before a query runs, range functions whose every evaluation window covers
// whole roll-up buckets are rewritten so that their Selects ask the statsfeeder process for
// one synthetic sample per bucket (stamped at the bucket's end) instead of the raw samples.
//
// A bucket ending at e holds the samples stamped in (e-B, e], and Prometheus 3's window at
// t is (t-R, t]: when t and R are multiples of B the window holds exactly the buckets ending
// in it. So max/min/sum_over_time of the per-bucket max/min/sum equal the raw answers;
// count_over_time counts points, so it becomes sum_over_time of the per-bucket counts, and
// avg_over_time becomes the sum of the bucket sums over the sum of the bucket counts (a
// count-weighted mean, as the raw average is). The view travels as a matcher on a label no
// series has (rollupLabel); storage.go takes it off before the Select leaves the engine.

import (
	"fmt"
	"math"
	"time"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"
)

const rollupLabel = "__sf_rollup__"

type rollupPolicy struct {
	enabled bool
	minStep time.Duration
	// fresh: buckets ending within it of now are folded from the raw samples by the store
	// (rollup_select.py); a selector none of whose buckets is older reads raw directly.
	fresh time.Duration
	now   func() time.Time
}

var rollupFuncs = map[string]bool{
	"avg_over_time": true, "max_over_time": true, "min_over_time": true,
	"sum_over_time": true, "count_over_time": true,
}

// tierFor is the coarsest roll-up tier whose bucket tiles every window of a selector with
// range rng evaluated at start, start+step, ... (step 0: an instant query), or "" (raw).
// A tier whose first bucket (the first window's) is fresh is passed over: the store would
// fold every bucket from the raw samples, slower than the engine reading them.
func (p rollupPolicy) tierFor(rng time.Duration, start time.Time, step time.Duration) string {
	if !p.enabled || (step != 0 && step < p.minStep) {
		return ""
	}
	settled := int64(math.MaxInt64)
	if p.now != nil {
		settled = p.now().Add(-p.fresh).UnixMilli()
	}
	for _, tier := range []struct {
		name   string
		bucket time.Duration
	}{{"daily", 24 * time.Hour}, {"hourly", time.Hour}} {
		b := tier.bucket.Milliseconds()
		if rng.Milliseconds()%b == 0 && step.Milliseconds()%b == 0 && start.UnixMilli()%b == 0 {
			if firstEnd := start.UnixMilli() - rng.Milliseconds() + b; firstEnd <= settled/b*b {
				return tier.name
			}
		}
	}
	return ""
}

// usesRollupLabel reports a query that names the internal label itself (refused: the view
// is the planner's to choose).
func usesRollupLabel(expr parser.Expr) bool {
	found := false
	parser.Inspect(expr, func(node parser.Node, _ []parser.Node) error {
		if vs, ok := node.(*parser.VectorSelector); ok {
			for _, m := range vs.LabelMatchers {
				if m.Name == rollupLabel {
					found = true
				}
			}
		}
		return nil
	})
	return found
}

// planRollups returns the query text to run: qs itself, or its rewrite reading roll-ups.
func (p rollupPolicy) planRollups(parse func(string) (parser.Expr, error), qs string,
	start time.Time, step time.Duration) (string, error) {
	expr, err := parse(qs)
	if err != nil {
		return qs, nil // the engine reports it with its own wording
	}
	if usesRollupLabel(expr) {
		return "", fmt.Errorf("label %s is reserved", rollupLabel)
	}
	if !p.enabled {
		return qs, nil
	}
	changed := false
	out := p.rewrite(expr, start, step, &changed)
	if !changed {
		return qs, nil
	}
	return out.String(), nil
}

func (p rollupPolicy) rewrite(node parser.Expr, start time.Time, step time.Duration,
	changed *bool) parser.Expr {
	switch n := node.(type) {
	case *parser.Call:
		if replaced := p.rewriteCall(n, start, step); replaced != nil {
			*changed = true
			return replaced
		}
		for i, arg := range n.Args {
			n.Args[i] = p.rewrite(arg, start, step, changed)
		}
	case *parser.AggregateExpr:
		n.Expr = p.rewrite(n.Expr, start, step, changed)
		if n.Param != nil {
			n.Param = p.rewrite(n.Param, start, step, changed)
		}
	case *parser.BinaryExpr:
		n.LHS = p.rewrite(n.LHS, start, step, changed)
		n.RHS = p.rewrite(n.RHS, start, step, changed)
	case *parser.ParenExpr:
		n.Expr = p.rewrite(n.Expr, start, step, changed)
	case *parser.UnaryExpr:
		n.Expr = p.rewrite(n.Expr, start, step, changed)
	}
	// Subqueries evaluate on their own grid: their insides stay on raw samples.
	return node
}

func (p rollupPolicy) rewriteCall(call *parser.Call, start time.Time, step time.Duration,
) parser.Expr {
	if !rollupFuncs[call.Func.Name] || len(call.Args) != 1 {
		return nil
	}
	ms, ok := call.Args[0].(*parser.MatrixSelector)
	if !ok || ms.RangeExpr != nil || ms.Range <= 0 {
		return nil
	}
	vs, ok := ms.VectorSelector.(*parser.VectorSelector)
	if !ok || vs.OriginalOffset != 0 || vs.OriginalOffsetExpr != nil || vs.Timestamp != nil ||
		vs.StartOrEnd != 0 || vs.Anchored || vs.Smoothed {
		return nil
	}
	tier := p.tierFor(ms.Range, start, step)
	if tier == "" {
		return nil
	}
	view := func(field string) *parser.Call {
		copied := *vs
		copied.LabelMatchers = append(append([]*labels.Matcher{}, vs.LabelMatchers...),
			labels.MustNewMatcher(labels.MatchEqual, rollupLabel, tier+":"+field))
		function := call.Func
		if field == "count" {
			function = parser.Functions["sum_over_time"]
		}
		return &parser.Call{Func: function, Args: parser.Expressions{
			&parser.MatrixSelector{VectorSelector: &copied, Range: ms.Range}}}
	}
	switch call.Func.Name {
	case "max_over_time":
		return view("max")
	case "min_over_time":
		return view("min")
	case "sum_over_time":
		return view("sum")
	case "count_over_time":
		return view("count")
	}
	sum := view("sum")
	sum.Func = parser.Functions["sum_over_time"]
	return &parser.ParenExpr{Expr: &parser.BinaryExpr{
		Op: parser.DIV, LHS: sum, RHS: view("count"),
		VectorMatching: &parser.VectorMatching{Card: parser.CardOneToOne}}}
}
