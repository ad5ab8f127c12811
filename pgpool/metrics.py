"""Prometheus metrics for every pool in the process, from their `stats()` snapshots.

Optional: needs ``prometheus-client`` (``pip install 'pgpool[prometheus]'``); the pool
itself never imports this module. Register the collector once::

    from prometheus_client import REGISTRY
    from pgpool.metrics import PoolCollector

    REGISTRY.register(PoolCollector())

Every live pool is then exported at each scrape, with its name as the ``pool`` label: the
gauges ``pgpool_connections{state="idle|in_use|connecting"}``, ``pgpool_size``,
``pgpool_waiting``, ``pgpool_min_size`` and ``pgpool_max_size``, and one counter per
`PoolStats` counter (``pgpool_checkouts_total``, ``pgpool_wait_seconds_total``, ...).

A scrape reads `stats()`, never `pop_stats()`: Prometheus computes rates from ever-growing
totals, so do not also reset the counters of a pool it watches.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from .base import PoolBase, live_pools
from .pool import AbstractConnectionPool
from .stats import COUNTERS

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

# Counter name (without the _total suffix the client adds) and help text, per stats field.
_COUNTER_NAMES = {
    "checkouts": ("pgpool_checkouts", "Connections handed out by getconn."),
    "waits": ("pgpool_waits", "Checkouts that had to queue."),
    "timeouts": ("pgpool_timeouts", "getconn calls that ran out of time."),
    "wait_time": ("pgpool_wait_seconds", "Seconds callers spent queued."),
    "connections_opened": ("pgpool_connections_opened", "Connections opened."),
    "connect_errors": ("pgpool_connect_errors", "Connects that failed."),
    "connections_closed": ("pgpool_connections_closed", "Connections closed, any reason."),
    "idle_reaped": ("pgpool_idle_reaped", "Connections closed after max_idle."),
    "expired": ("pgpool_expired", "Connections closed after max_lifetime."),
    "leases_reclaimed": ("pgpool_leases_reclaimed", "Checkouts reclaimed after max_lease."),
    "broken_returns": ("pgpool_broken_returns", "Returns that were broken or failed cleaning."),
    "failed_checks": ("pgpool_failed_checks", "Idle connections found dead by a check."),
}
assert set(_COUNTER_NAMES) == set(COUNTERS), "every counter is exported"


class PoolCollector:
    """A `prometheus_client` collector for the given pools, or for every live pool."""

    def __init__(self, pools: Iterable[AbstractConnectionPool] | None = None) -> None:
        self._pools = None if pools is None else list(pools)

    def collect(self) -> Iterator[Metric]:
        # Imported here: pgpool.metrics can be imported (and type-checked) without it.
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        pools: list[PoolBase] = live_pools() if self._pools is None else [*self._pools]
        snapshots = [pool.stats() for pool in pools if not pool.closed]
        labels = ["pool"]
        connections = GaugeMetricFamily(
            "pgpool_connections", "Connections by state.", labels=["pool", "state"]
        )
        gauges: dict[str, Any] = {
            "size": GaugeMetricFamily("pgpool_size", "Connections open or opening.", labels=labels),
            "waiting": GaugeMetricFamily("pgpool_waiting", "Callers queued.", labels=labels),
            "minconn": GaugeMetricFamily("pgpool_min_size", "minconn.", labels=labels),
            "maxconn": GaugeMetricFamily("pgpool_max_size", "maxconn.", labels=labels),
        }
        counters = {
            field: CounterMetricFamily(name, text, labels=labels)
            for field, (name, text) in _COUNTER_NAMES.items()
        }
        for stats in snapshots:
            for state in ("idle", "in_use", "connecting"):
                connections.add_metric([stats.name, state], getattr(stats, state))
            for field, family in [*gauges.items(), *counters.items()]:
                family.add_metric([stats.name], getattr(stats, field))
        yield connections
        yield from gauges.values()
        yield from counters.values()
