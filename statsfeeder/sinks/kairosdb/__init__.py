"""KairosDB 1.3 over its REST API: the optional second sink of "hybrid mode".

``encoder`` turns series into ``POST /api/v1/datapoints`` bodies, ``writer`` sends them
(gzip, batches, retries, bounded in-flight), ``sink`` is the pipeline's ``KairosDBSink`` and
``purge`` deletes datapoints older than the retention window.
"""
