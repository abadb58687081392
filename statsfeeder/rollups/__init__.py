"""Hourly and daily roll-ups beside the raw samples: per series (VM, metric, instance) and per
VDC and org. Computed from what Cassandra stores, never from data in flight, so a backfill, a
re-read overlap or a rewritten window leaves them equal to a recomputation from the raw rows.

schema (tables, buckets), compute (pure aggregation), store (Cassandra reads and writes),
marks (which hours to redo, written after the raw rows are acknowledged), worker (the bounded
background task), reader (roll-ups for a time range, for a query layer), report (usage).
"""
