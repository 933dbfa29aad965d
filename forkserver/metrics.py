"""Prometheus metrics of the walredo manager, named after Neon pageserver's walredo metrics.

Each :class:`WalRedoManager` gets its own :class:`RedoMetrics`; by default they live in a private
``CollectorRegistry`` (so several managers in one process, as in the tests, do not collide), and a service
passes ``prometheus_client.REGISTRY`` to export them.

| name                                            | type      | labels  | Neon counterpart                     |
|-------------------------------------------------|-----------|---------|--------------------------------------|
| pageserver_wal_redo_seconds                     | histogram |         | same name                            |
| pageserver_wal_redo_records_histogram           | histogram |         | same name                            |
| pageserver_wal_redo_process_launch_duration     | histogram |         | same name                            |
| pageserver_wal_redo_processes_started_total     | counter   |         | WAL_REDO_PROCESS_COUNTERS.started    |
| pageserver_wal_redo_processes_stopped_total     | counter   | cause   | WAL_REDO_PROCESS_COUNTERS.killed_by_*|
| pageserver_wal_redo_requests_total              | counter   | outcome | (new: per-outcome request count)     |
"""

from __future__ import annotations

import enum

from prometheus_client import CollectorRegistry, Counter, Histogram

# Redo of one page takes from tens of microseconds (a couple of records) to seconds (a long chain).
_REDO_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)
_RECORD_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
_LAUNCH_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0)


class StopCause(enum.Enum):
    """Why a tenant's walredo process was stopped (label values of processes_stopped_total)."""

    IDLE = "idle"
    TIMEOUT = "timeout"
    BROKEN = "broken"  # died or its stream broke while serving (other than the two causes below)
    SANDBOX_VIOLATION = "sandbox_violation"  # killed by its seccomp filter (SIGSYS): a syscall off the list
    MEMORY_LIMIT = "memory_limit"  # an allocation failed at its address-space limit (forkserver.sandbox)
    SHUTDOWN = "shutdown"


class Outcome(enum.Enum):
    """How one request_redo/ping call ended (label values of requests_total)."""

    OK = "ok"
    REDO_ERROR = "redo_error"  # deterministic: the engine refused the input
    TIMEOUT = "timeout"
    FAILED = "failed"  # process broke and retries were exhausted, or the template was unavailable
    CANCELLED = "cancelled"
    CLOSED = "closed"


class RedoMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.redo_seconds = Histogram(
            "pageserver_wal_redo_seconds", "Time spent on WAL redo of one page", buckets=_REDO_BUCKETS, registry=r
        )
        self.records = Histogram(
            "pageserver_wal_redo_records_histogram",
            "Number of WAL records per redo request",
            buckets=_RECORD_BUCKETS,
            registry=r,
        )
        self.launch_seconds = Histogram(
            "pageserver_wal_redo_process_launch_duration",
            "Time from asking the template for a tenant process to holding it",
            buckets=_LAUNCH_BUCKETS,
            registry=r,
        )
        self.started = Counter(
            "pageserver_wal_redo_processes_started", "Walredo processes started", registry=r
        )
        self.stopped = Counter(
            "pageserver_wal_redo_processes_stopped", "Walredo processes stopped, by cause", ["cause"], registry=r
        )
        self.requests = Counter(
            "pageserver_wal_redo_requests", "Redo and ping requests, by outcome", ["outcome"], registry=r
        )
        # Label children resolved once: labels() takes a lock and a dict lookup, too much for every request.
        self._stopped = {cause: self.stopped.labels(cause.value) for cause in StopCause}
        self._requests = {outcome: self.requests.labels(outcome.value) for outcome in Outcome}

    def count_stop(self, cause: StopCause) -> None:
        self._stopped[cause].inc()

    def count_request(self, outcome: Outcome) -> None:
        self._requests[outcome].inc()
