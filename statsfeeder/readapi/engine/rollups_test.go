package main

import (
	"testing"
	"time"
)

func TestTierForPassesOverTiersWhoseFirstBucketIsFresh(t *testing.T) {
	now := time.Date(2026, 12, 1, 10, 2, 30, 0, time.UTC)
	policy := rollupPolicy{enabled: true, minStep: time.Hour, fresh: 4 * time.Hour,
		now: func() time.Time { return now }}
	at := func(hour int) time.Time { return time.Date(2026, 12, 1, hour, 0, 0, 0, time.UTC) }
	for _, c := range []struct {
		name  string
		rng   time.Duration
		start time.Time
		step  time.Duration
		want  string
	}{
		// Buckets ending at or before 06:00 are settled (now - 4 h, to the hour).
		{"the last hour, instant: every bucket fresh", time.Hour, at(10), 0, ""},
		{"first bucket ends 06:00", time.Hour, at(6), 0, "hourly"},
		{"first bucket ends 07:00", time.Hour, at(7), 0, ""},
		{"a 6-hour window reaching settled hours", 6 * time.Hour, at(10), 0, "hourly"},
		{"a range query whose first window is settled", time.Hour, at(5), time.Hour, "hourly"},
		{"today: its daily bucket is fresh, its first hours are not", 24 * time.Hour,
			at(0).Add(24 * time.Hour), 0, "hourly"},
		{"yesterday: its daily bucket is settled", 24 * time.Hour, at(0), 0, "daily"},
		{"unaligned", time.Hour, at(5).Add(time.Minute), 0, ""},
	} {
		if got := policy.tierFor(c.rng, c.start, c.step); got != c.want {
			t.Errorf("%s: tierFor = %q, want %q", c.name, got, c.want)
		}
	}
	// No fresh hours (rollups_fresh_hours: 0): every aligned selector reads the roll-ups.
	policy.fresh = 0
	if got := policy.tierFor(time.Hour, at(10), 0); got != "hourly" {
		t.Errorf("fresh 0: tierFor = %q, want hourly", got)
	}
}
