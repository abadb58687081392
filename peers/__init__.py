"""Real peers for development and tests, provisioned from package registries and cached.

Each peer module (cassandra, vcsim, kairosdb, prometheus) exposes ``up(options) -> dict`` of
``KEY=VALUE`` connection facts, ``down()`` and ``status() -> str``. Downloads and builds are
cached under ``~/.cache/statsfeeder/`` so a fresh clone (CI) reuses them; running state (data
directories, logs, PID files) lives under the cache's ``run/`` folder.
"""
