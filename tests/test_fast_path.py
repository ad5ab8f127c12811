"""The inlined fast paths do exactly what the PoolState transitions they copy do.

`getconn` inlines `PoolState.take_idle(None, now)` and `putconn` inlines the no-waiter case
of `PoolState.give_back(slot, now)`: the two hottest lines of the pool, kept out of a method
call. Everywhere else every change of state is a named transition. So that the copies
cannot drift from the originals, Hypothesis drives a pool through random checkouts and
returns (its fast paths) while a twin `PoolState` goes through the same steps by the
transitions, and the two are compared after every step.
"""

from __future__ import annotations

import copy
from typing import Any
from unittest import mock

import psycopg2.extensions
import psycopg2.extensions as ext
import pytest
from fakes import FakeClock, FakeConnection, FakeServer
from hypothesis import given, settings
from hypothesis import strategies as st

import pgpool
from pgpool import connection as conn_ops
from pgpool.connection import is_reusable, session_defaults
from pgpool.state import PoolState, Slot

SIZE = 3
# A step: check out, return the n-th connection held (oldest first), or let time pass (more
# than health_check_after, too: the fast path then hands over to the health check).
steps = st.lists(
    st.one_of(
        st.just("get"),
        st.tuples(st.just("put"), st.integers(0, SIZE - 1)),
        st.tuples(st.just("tick"), st.sampled_from([0.001, 0.2, 1.0])),
    ),
    max_size=40,
)


def view(state: PoolState) -> dict[str, Any]:
    """What the two must agree on, with connections named by identity."""
    return {
        "idle": [(id(s.conn), s.last_used) for s in state.idle],
        "leased": {k: (s.leased_at, s.last_used, s.key) for k, s in state.leased.items()},
        "waiters": len(state.waiters),
        "checkouts": state.checkouts,
        "size": state.size,
    }


@settings(max_examples=200, deadline=None)
@given(steps=steps)
def test_fast_paths_match_the_transitions_they_copy(steps: list[Any]) -> None:
    clock, server = FakeClock(), FakeServer()
    pool = pgpool.ThreadedConnectionPool(
        SIZE, SIZE, clock=clock, connector=server.connect, maintenance_interval=None
    )
    try:
        state = pool._state
        twin = PoolState(pool._options)
        copies = {id(s.conn): copy.copy(s) for s in state.idle}
        twin.opened_initial([copies[id(s.conn)] for s in state.idle])
        held: list[Any] = []
        for step in steps:
            if step == "get":
                if not state.idle:
                    continue  # getconn would wait: not the fast path
                conn = pool.getconn()  # the inlined take_idle
                twin_slot = twin.take_idle(None, clock())
                assert twin_slot is not None and twin_slot.conn is conn
                held.append(conn)
            elif step[0] == "put":
                if step[1] >= len(held):
                    continue
                conn = held.pop(step[1])
                pool.putconn(conn)  # the inlined give_back
                twin.give_back(copies[id(conn)], clock())
            else:
                clock.advance(step[1])
            assert view(state) == view(twin)
            state.check_invariants()
    finally:
        pool.closeall()


def test_the_twin_really_differs_when_a_copy_is_wrong() -> None:
    """The comparison above can fail: a slot put back without its last use recorded."""
    clock, server = FakeClock(), FakeServer()
    pool = pgpool.ThreadedConnectionPool(
        1, 1, clock=clock, connector=server.connect, maintenance_interval=None
    )
    try:
        twin = PoolState(pool._options)
        twin.opened_initial([copy.copy(s) for s in pool._state.idle])
        conn = pool.getconn()
        slot: Slot | None = twin.take_idle(None, clock())
        assert slot is not None
        clock.advance(1)
        pool.putconn(conn)
        twin.leased.pop(id(conn))
        twin.idle.append(slot)  # give_back without slot.last_used = now
        assert view(pool._state) != view(twin)
    finally:
        pool.closeall()


# putconn's fast path compares the session attributes one at a time: each comparison must be
# there, or a borrower's change to that one attribute would reach the next borrower.
@pytest.mark.parametrize(
    ("attribute", "value"),
    [
        ("autocommit", True),
        ("isolation_level", psycopg2.extensions.ISOLATION_LEVEL_SERIALIZABLE),
        ("readonly", True),
        ("deferrable", True),
    ],
)
def test_one_session_attribute_changed_is_restored(dsn: str, attribute: str, value: Any) -> None:
    pool = pgpool.ThreadedConnectionPool(0, 1, dsn, maintenance_interval=None)
    try:
        conn = pool.getconn()
        defaults = session_defaults(conn)
        setattr(conn, attribute, value)
        pool.putconn(conn)
        again = pool.getconn()
        assert again is conn
        assert session_defaults(again) == defaults
        pool.putconn(again)
    finally:
        pool.closeall()


class _TwoPhaseFake(FakeConnection):
    """A fake whose two status readings are set by the test: libpq's (the transaction
    status) and psycopg2's (`status`), which disagree after tpc_prepare()."""

    status = ext.STATUS_READY


@settings(max_examples=50, deadline=None)
@given(
    libpq=st.sampled_from([ext.TRANSACTION_STATUS_IDLE, ext.TRANSACTION_STATUS_INTRANS]),
    psycopg2_status=st.sampled_from([ext.STATUS_READY, ext.STATUS_BEGIN, ext.STATUS_PREPARED]),
)
def test_the_return_fast_path_judges_clean_as_is_reusable_does(
    libpq: int, psycopg2_status: int
) -> None:
    """putconn's fast path inlines connection.is_reusable: it skips cleaning exactly when
    is_reusable says the connection is clean (both statuses idle), and never when only libpq
    says so (a two-phase transaction after tpc_prepare)."""
    server = FakeServer()
    pool = pgpool.ThreadedConnectionPool(
        1, 1, connector=lambda: _TwoPhaseFake(server), maintenance_interval=None
    )
    cleaned: list[Any] = []
    try:
        conn = pool.getconn()
        conn._status, conn.status = libpq, psycopg2_status
        expected_fast = is_reusable(conn)
        with mock.patch.object(conn_ops, "clean", lambda c, *_: cleaned.append(c) or False):
            pool.putconn(conn)
        assert (not cleaned) == expected_fast
        assert expected_fast == (
            libpq == ext.TRANSACTION_STATUS_IDLE and psycopg2_status == ext.STATUS_READY
        )
    finally:
        pool.closeall()
