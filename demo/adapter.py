"""Read what a pool holds right now: one `Snapshot` per pool, whatever the pool.

This is the only module of the demo that looks inside a pool. Those insides are private
and change (pgpool's core is being reworked), so every read here is defensive: an attribute
that is missing gives "unknown" instead of an exception, and the demo shows what it can.
The reads take no lock: a frame may be a few microseconds inconsistent, which a display
refreshed ten times a second never shows. (`pgpool.stats()` does take the pool's lock, for
consistent counters, and is cheap.)

Lanes: a connection keeps the same lane for its whole life, so a row on the screen is one
connection, from connecting to closed; a lane freed by a closed connection is reused.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

# What a lane can show. "empty": no connection in that slot.
IDLE, IN_USE, CONNECTING, RETURNING, EMPTY = "idle", "in use", "connecting", "returning", "empty"
STATES = (IN_USE, RETURNING, CONNECTING, IDLE, EMPTY)


@dataclass(frozen=True)
class Snapshot:
    """One pool at one moment: a state per lane (maxconn lanes) and its counters."""

    lanes: tuple[str, ...]
    counters: dict[str, int] = field(default_factory=dict)  # the pool's own, if it has any


class Adapter:
    """Assigns connections to lanes and reads a pool's state. Subclass per pool family."""

    def __init__(self, pool: Any, maxconn: int) -> None:
        self.pool = pool
        self.maxconn = maxconn
        self._lane_of: dict[int, int] = {}  # id(conn) -> lane

    def snapshot(self) -> Snapshot:
        groups = self.read()
        if groups is None:
            return Snapshot((EMPTY,) * self.maxconn, self.counters())
        conns, connecting = groups
        lanes = [EMPTY] * self.maxconn
        # Forget the lanes of connections that are gone, then place the present ones.
        present = {id(c) for c, _ in conns}
        self._lane_of = {k: v for k, v in self._lane_of.items() if k in present}
        for conn, state in conns:
            lane = self._lane_of.get(id(conn))
            if lane is None:
                lane = self._free_lane(lanes)
                if lane is None:
                    continue  # more connections than lanes: cannot happen in a correct pool
                self._lane_of[id(conn)] = lane
            lanes[lane] = state
        for _ in range(connecting):  # connects in flight have no connection yet
            lane = self._free_lane(lanes)
            if lane is not None:
                lanes[lane] = CONNECTING
        return Snapshot(tuple(lanes), self.counters())

    def _free_lane(self, lanes: list[str]) -> int | None:
        taken = set(self._lane_of.values())
        for i, state in enumerate(lanes):
            if state == EMPTY and i not in taken:
                return i
        return None

    def read(self) -> tuple[list[tuple[Any, str]], int] | None:
        """[(connection, state)] and the number of connects in flight; None if unknown."""
        return None

    def counters(self) -> dict[str, int]:
        return {}


def _items(container: Any) -> list[Any]:
    """A private container's items, copied in one step (safe against concurrent change)."""
    if container is None:
        return []
    try:
        values = container.values() if isinstance(container, dict) else container
        return list(values)
    except (RuntimeError, TypeError):  # changed size while copying, or not a container
        return []


def _conn_of(item: Any) -> Any:
    """pgpool keeps a `Slot` per connection (with `.conn`); other pools the connection."""
    return getattr(item, "conn", item)


class PgpoolAdapter(Adapter):
    """pgpool: `pool._state` holds `idle` (list), `leased` and `returning` (dicts of slots)
    and `connecting` (a count); `stats()` gives the counters."""

    def read(self) -> tuple[list[tuple[Any, str]], int] | None:
        state = getattr(self.pool, "_state", None)
        if state is None:
            return None
        conns: list[tuple[Any, str]] = []
        for name, lane_state in (("leased", IN_USE), ("returning", RETURNING), ("idle", IDLE)):
            conns += [(_conn_of(s), lane_state) for s in _items(getattr(state, name, None))]
        connecting = getattr(state, "connecting", 0)
        return conns, connecting if isinstance(connecting, int) else 0

    def counters(self) -> dict[str, int]:
        try:
            stats = self.pool.stats()
        except Exception:  # closed, or a stats() that changed shape: show none
            return {}
        names: tuple[str, ...] = ("connections_opened", "connections_closed", "waits", "timeouts")
        names += ("idle_reaped", "leases_reclaimed", "broken_returns", "failed_checks")
        return {n: int(getattr(stats, n)) for n in names if hasattr(stats, n)}


class Psycopg2Adapter(Adapter):
    """psycopg2.pool: `_pool` is the idle list, `_used` maps keys to connections in use. It
    connects inside getconn under its lock, so a connect in flight cannot be seen."""

    def read(self) -> tuple[list[tuple[Any, str]], int] | None:
        if not hasattr(self.pool, "_pool"):
            return None
        used = [(c, IN_USE) for c in _items(getattr(self.pool, "_used", None))]
        idle = [(c, IDLE) for c in _items(self.pool._pool)]
        return used + idle, 0


class CourseAdapter(Adapter):
    """The course's pools and any other: in use are the connections the demo's threads
    hold (they know); idle ones are found in `_idle` (a list) or in `_tokens` (step 2's
    queue.Queue, where None stands for a slot with no connection); `_connecting` counts
    connects in flight where a pool has it."""

    def __init__(self, pool: Any, maxconn: int, held: Callable[[], Iterable[Any]]) -> None:
        super().__init__(pool, maxconn)
        self._held = held

    def read(self) -> tuple[list[tuple[Any, str]], int] | None:
        conns = [(c, IN_USE) for c in self._held()]
        tokens = getattr(getattr(self.pool, "_tokens", None), "queue", None)
        idle = _items(getattr(self.pool, "_idle", None)) or _items(tokens)
        conns += [(c, IDLE) for c in idle if c is not None]
        connecting = getattr(self.pool, "_connecting", 0)
        return conns, connecting if isinstance(connecting, int) else 0
