"""The exception tree. Every error says whether retrying the same operation may succeed.

    StatsfeederError
    ├── ConfigError            bad configuration (never retriable)
    ├── SourceError            vCenter side
    │   ├── VCenterUnavailable     connect/read failure or timeout (retriable)
    │   ├── NotAuthenticated       session expired: log in again, retry the chunk (retriable)
    │   ├── QueryTooLarge          server limit on metrics per query: halve the chunk (retriable)
    │   ├── PermissionDenied       NoPermission: the user lacks a privilege (not retriable)
    │   └── ResponseParseError     malformed QueryPerf answer (retriable: ask again)
    └── SinkError              storage side
        ├── SinkUnavailable        node down, timeout (retriable)
        │   └── SinkUnreachable        no node answers at all: set aside until a probe does
        ├── SchemaMismatch         keyspace/tables not what this version expects (not retriable)
        └── BatchRejected          the sink refused the data itself (not retriable)
"""

from __future__ import annotations


class StatsfeederError(Exception):
    retriable = False


class ConfigError(StatsfeederError):
    pass


class SourceError(StatsfeederError):
    retriable = True


class VCenterUnavailable(SourceError):
    pass


class NotAuthenticated(SourceError):
    pass


class QueryTooLarge(SourceError):
    pass


class PermissionDenied(SourceError):
    retriable = False


class ResponseParseError(SourceError):
    pass


class SinkError(StatsfeederError):
    retriable = True


class SinkUnavailable(SinkError):
    pass


class SinkUnreachable(SinkUnavailable):
    """Not one node or server of the sink could be reached: the service stops collecting for
    it until a probe answers (the watermarks then backfill what it missed)."""


class SchemaMismatch(SinkError):
    retriable = False


class BatchRejected(SinkError):
    retriable = False
