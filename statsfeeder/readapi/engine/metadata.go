package main

// Label names and label values without a series frame: the statsfeeder process answers with
// the distinct projections of the series in the caller's scope and time range onto the label
// names the request needs (dictionary-encoded), and the matchers are applied here, with
// Prometheus's own labels.Matcher, once per distinct value. The store narrows by exact
// matchers only; its Python regular expressions never decide.

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"

	"github.com/prometheus/prometheus/model/labels"
)

type labelTableRequest struct {
	Start   int64           `json:"start"`
	End     int64           `json:"end"`
	Scope   string          `json:"scope"`
	Sets    [][]matcherJSON `json:"sets"`
	Columns []string        `json:"columns"`
	Names   bool            `json:"names"`
}

// labelTable: Columns[c] are column c's distinct values; each row is len(Columns) indexes
// into them, then (with names asked) an index into NameSets.
type labelTable struct {
	Columns  [][]string `json:"columns"`
	NameSets [][]string `json:"name_sets"`
	Rows     []int      `json:"rows"`
}

func (s *remoteStore) labelsURL() string {
	return strings.TrimSuffix(s.url, "/select") + "/labels"
}

func (s *remoteStore) labelTable(ctx context.Context, request labelTableRequest) (*labelTable, error) {
	response, err := s.post(ctx, s.labelsURL(), request, true)
	if err != nil {
		return nil, err
	}
	defer response.Body.Close()
	table := &labelTable{}
	if err := json.NewDecoder(response.Body).Decode(table); err != nil {
		return nil, storageFailure{fmt.Sprintf("storage: bad label table: %v", err)}
	}
	width := len(request.Columns)
	if request.Names {
		width++
	}
	if len(table.Columns) != len(request.Columns) || (width > 0 && len(table.Rows)%width != 0) {
		return nil, storageFailure{"storage: bad label table shape"}
	}
	return table, nil
}

// columnsFor lists the label names the matcher sets name, then extra (if not among them).
func columnsFor(sets [][]*labels.Matcher, extra string) []string {
	var out []string
	seen := map[string]bool{}
	add := func(name string) {
		if !seen[name] {
			seen[name] = true
			out = append(out, name)
		}
	}
	for _, set := range sets {
		for _, m := range set {
			add(m.Name)
		}
	}
	if extra != "" {
		add(extra)
	}
	return out
}

// eachMatching calls found with every row that all matchers of at least one set accept.
func (t *labelTable) eachMatching(sets [][]*labels.Matcher, columns []string, width int,
	found func(row []int)) error {
	position := map[string]int{}
	for i, name := range columns {
		position[name] = i
	}
	type check struct {
		column int
		ok     []bool
	}
	accepted := make([][]check, len(sets))
	for i, set := range sets {
		for _, m := range set {
			column := position[m.Name]
			ok := make([]bool, len(t.Columns[column]))
			for j, value := range t.Columns[column] {
				ok[j] = m.Matches(value)
			}
			accepted[i] = append(accepted[i], check{column, ok})
		}
	}
	if width == 0 {
		return nil
	}
	for start := 0; start+width <= len(t.Rows); start += width {
		row := t.Rows[start : start+width]
		for _, checks := range accepted {
			all := true
			for _, c := range checks {
				index := row[c.column]
				if index < 0 || index >= len(c.ok) {
					return storageFailure{"storage: bad label table index"}
				}
				if !c.ok[index] {
					all = false
					break
				}
			}
			if all {
				found(row)
				break
			}
		}
	}
	return nil
}

// labelsFromStore answers /labels (name == "") and /label_values (the values of name).
func (s *server) labelsFromStore(r *http.Request, name string) (map[string]struct{}, *apiError) {
	sets, start, end, failure := s.matchersOverRange(r, false)
	if failure != nil {
		return nil, failure
	}
	columns := columnsFor(sets, name)
	request := labelTableRequest{Start: start.UnixMilli(), End: end.UnixMilli(),
		Scope: r.FormValue("scope"), Columns: columns, Names: name == ""}
	for _, set := range sets {
		var encoded []matcherJSON
		for _, m := range set {
			encoded = append(encoded, matcherJSON{Type: m.Type.String(), Name: m.Name, Value: m.Value})
		}
		request.Sets = append(request.Sets, encoded)
	}
	ctx, cancel := s.context(r)
	defer cancel()
	table, err := s.store.labelTable(ctx, request)
	if err != nil {
		return nil, classify(err)
	}
	width := len(columns)
	target := width - 1 // the asked name is the last column (columnsFor)
	if name == "" {
		target = width
		width++
	} else {
		for i, column := range columns {
			if column == name {
				target = i
			}
		}
	}
	out := map[string]struct{}{}
	err = table.eachMatching(sets, columns, width, func(row []int) {
		index := row[target]
		if name == "" {
			if index >= 0 && index < len(table.NameSets) {
				for _, label := range table.NameSets[index] {
					out[label] = struct{}{}
				}
			}
			return
		}
		if index >= 0 && index < len(table.Columns[target]) && table.Columns[target][index] != "" {
			out[table.Columns[target][index]] = struct{}{}
		}
	})
	if err != nil {
		return nil, classify(err)
	}
	return out, nil
}
