"""The scenarios: what load each one puts on the pools, and what to watch for.

Every pool in a run gets the same scenario: the same number of worker threads, the same
query (``SELECT pg_sleep(query)``), the same pause between requests, the same phases and
faults. Times are in seconds; ``--short`` scales them all down (for the tests).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class Phase:
    """From `at` seconds on, `threads` worker threads are busy."""

    at: float
    threads: int
    label: str


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    watch: str  # what the viewer should look at, shown under the title
    minconn: int
    maxconn: int
    phases: tuple[Phase, ...]
    duration: float
    query: float = 0.01  # seconds the server spends on each request
    think: float = 0.0  # seconds a thread pauses between requests
    connect_delay: float = 0.0  # added to every connect, as if the server were far away
    fault: str | None = None  # "restart" or "leak"
    fault_at: float = 0.0
    downtime: float = 0.0  # restart: seconds the server stays down between stop and start
    # pgpool's options for this scenario (the other pools have no equivalent).
    pgpool_options: dict[str, Any] = field(default_factory=dict)

    @property
    def threads(self) -> int:
        return max(p.threads for p in self.phases)

    def scaled(self, factor: float) -> Scenario:
        """The same scenario with every duration multiplied by `factor` (query time and
        connect delay too, so the proportions stay)."""
        options = dict(self.pgpool_options)
        for key in ("max_idle", "max_lease", "maintenance_interval", "health_check_after"):
            if key in options:
                options[key] = options[key] * factor
        return replace(
            self,
            phases=tuple(replace(p, at=p.at * factor) for p in self.phases),
            duration=self.duration * factor,
            query=self.query * factor,
            think=self.think * factor,
            connect_delay=self.connect_delay * factor,
            fault_at=self.fault_at * factor,
            downtime=self.downtime * factor,
            pgpool_options=options,
        )


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            name="steady",
            title="steady load: 4 threads, 10 ms queries, 20 ms pauses",
            watch="Little's law: 4 threads each busy a third of the time keep about 1.3 "
            "connections working on average; now and then all 4 ask at once, so the pool "
            "grows to 4 and no further. The last lanes stay empty.",
            minconn=2,
            maxconn=6,
            phases=(Phase(0, 4, "4 threads"),),
            duration=12,
            query=0.01,
            think=0.02,
            pgpool_options={"timeout": 5},
        ),
        Scenario(
            name="contention",
            title="contention: 12 threads on 4 connections, 20 ms queries",
            watch="Every lane is busy and 8 threads queue. pgpool serves them in arrival "
            "order: a wait is about 8 / 4 x 20 ms = 40 ms (more on a busy machine), and "
            "every thread gets its turn. psycopg2.pool says 'exhausted' and its threads "
            "retry: some wait far longer than others.",
            minconn=2,
            maxconn=4,
            phases=(Phase(0, 12, "12 threads"),),
            duration=12,
            query=0.02,
            pgpool_options={"timeout": 10},
        ),
        Scenario(
            name="spike",
            title="spike: 2 threads, then 30 at once, then 2 again; 150 ms connects",
            watch="At the spike, lanes turn to 'connecting' one at a time (pgpool's "
            "connector opens one connection at a time), while returned connections already "
            "serve the queue; after it, idle lanes above minconn close once max_idle (4 s) "
            "has passed.",
            minconn=1,
            maxconn=10,
            phases=(
                Phase(0, 2, "2 threads"),
                Phase(3, 30, "spike: 30 threads"),
                Phase(7, 2, "back to 2 threads"),
            ),
            duration=16,
            query=0.02,
            think=0.03,
            connect_delay=0.15,
            pgpool_options={"timeout": 10, "max_idle": 4, "maintenance_interval": 0.5},
        ),
        Scenario(
            name="restart",
            title="restart: the server stops under load for 2 s, then starts again",
            watch="While the server is down, requests fail and the lanes empty; when it is "
            "back, pgpool reconnects (with back-off: 10 ms, doubling) and the lanes fill "
            "again.",
            minconn=2,
            maxconn=6,
            phases=(Phase(0, 6, "6 threads"),),
            duration=14,
            query=0.01,
            think=0.01,
            fault="restart",
            fault_at=4,
            downtime=2,
            pgpool_options={"timeout": 5, "maintenance_interval": 0.5},
        ),
        Scenario(
            name="leak",
            title="leak: a thread forgets a connection; max_lease is 4 s",
            watch="At 2 s one thread takes a connection and never returns it (a lane "
            "marked leaked). pgpool takes it back after max_lease and logs where it was "
            "checked out; psycopg2.pool has lost that slot for good.",
            minconn=2,
            maxconn=3,
            phases=(Phase(0, 3, "3 threads"),),
            duration=12,
            query=0.02,
            think=0.02,
            fault="leak",
            fault_at=2,
            pgpool_options={"timeout": 5, "max_lease": 4, "maintenance_interval": 0.5},
        ),
    )
}
