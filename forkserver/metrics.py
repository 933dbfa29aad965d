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

The template's own metrics (``walredo-template --metrics-port N``) come from :func:`renderer`: read from
``Template.counters()`` at each scrape (no second copy of the counters to keep in step), plus
prometheus_client's ``process_*`` metrics of the template process. This module is imported by the template
only when its endpoint is on.

| name                                     | type    | from ``Template.counters()``                       |
|------------------------------------------|---------|----------------------------------------------------|
| walredo_template_spawns_total            | counter | spawns (answered with a child)                     |
| walredo_template_fork_failures_total     | counter | fork_failures (on request or pre-forking)          |
| walredo_template_pool_refills_total      | counter | pool_refills (children pre-forked)                 |
| walredo_template_pool_hits_total         | counter | pool_hits (spawns served by a pool child)          |
| walredo_template_pool_misses_total       | counter | pool_misses (forked on request, the pool being on) |
| walredo_template_live_children           | gauge   | live (tenant children not yet reaped)              |
| walredo_template_idle_children           | gauge   | idle (pool children waiting)                       |
| walredo_template_pool_size               | gauge   | pool_size                                          |
| walredo_template_connections             | gauge   | connections (open control connections)             |
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

#: (stats key, metric name without ``_total``, help) of the template's counters and gauges.
TEMPLATE_COUNTERS = (
    ("spawns", "walredo_template_spawns", "Spawn requests answered with a child"),
    ("fork_failures", "walredo_template_fork_failures", "Forks that failed, on request or pre-forking the pool"),
    ("pool_refills", "walredo_template_pool_refills", "Children pre-forked into the pool"),
    ("pool_hits", "walredo_template_pool_hits", "Spawns served by a pre-forked child"),
    ("pool_misses", "walredo_template_pool_misses", "Spawns forked on request while the pool was on"),
)
TEMPLATE_GAUGES = (
    ("live", "walredo_template_live_children", "Tenant children forked and not yet reaped"),
    ("idle", "walredo_template_idle_children", "Pre-forked children waiting for a tenant"),
    ("pool_size", "walredo_template_pool_size", "Pre-forked children the template keeps ready"),
    ("connections", "walredo_template_connections", "Open control connections"),
)

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


class TemplateCollector(Collector):
    """The template's counters and gauges, read from ``counters()`` at each collection."""

    def __init__(self, counters: Callable[[], Mapping[str, object]]) -> None:
        self._counters = counters

    def collect(self) -> Iterator[Metric]:
        now = self._counters()
        for key, name, doc in TEMPLATE_COUNTERS:
            yield CounterMetricFamily(name, doc, value=_number(now.get(key)))
        for key, name, doc in TEMPLATE_GAUGES:
            yield GaugeMetricFamily(name, doc, value=_number(now.get(key)))


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) else 0.0


def renderer(counters: Callable[[], Mapping[str, object]]) -> Callable[[], bytes]:
    """A ``render()`` for :class:`forkserver.metrics_http.MetricsEndpoint`: the text exposition of the
    template's metrics (a private registry: :class:`TemplateCollector` and this process's ``process_*``)."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(TemplateCollector(counters))
    ProcessCollector(registry=registry)
    return lambda: generate_latest(registry)
