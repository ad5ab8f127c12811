"""The demo (`python -m demo`) runs every scenario to its end, piped, in its short mode.

Piped output must be plain (no escape codes) and fit 80 columns; the final frame must name
the lanes. Each run takes about two seconds.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from demo.__main__ import main
from demo.runner import run
from demo.scenarios import SCENARIOS
from testbed.embedded import EmbeddedPostgres


def _run(scenario: str, dsn: str, pools: list[str] | None = None, **kwargs: object) -> str:
    out = io.StringIO()
    console = Console(file=out, width=80)  # a file, not a terminal: the piped mode
    code = run(scenario, pools or ["pgpool"], dsn, console, short=True, **kwargs)  # type: ignore[arg-type]
    assert code == 0
    return out.getvalue()


def _check_plain(text: str, pools: list[str]) -> None:
    assert "\x1b" not in text  # no escape codes when piped
    assert max(len(line) for line in text.splitlines()) <= 80
    for lane in ("c1", "c2"):
        assert f"│ {lane} " in text or f"│  {lane} " in text
    assert "in use" in text and "idle" in text  # the legend
    for pool in pools:
        summary = [line for line in text.splitlines() if line.startswith(f"{pool}: ")]
        assert summary, f"no summary line for {pool}"
        assert " 0 queries" not in summary[0]


@pytest.mark.parametrize("scenario", [s for s in SCENARIOS if s != "restart"])
def test_scenario_runs_piped_and_ends(scenario: str, dsn: str) -> None:
    text = _run(scenario, dsn)
    _check_plain(text, ["pgpool"])
    assert SCENARIOS[scenario].title in text


def test_leak_is_reclaimed_by_pgpool_and_lost_by_psycopg2(dsn: str) -> None:
    text = _run("leak", dsn, ["pgpool", "psycopg2"])
    _check_plain(text, ["pgpool", "psycopg2"])
    assert "thread 0 forgets a connection" in text
    assert "reclaimed 1 leaked connection(s) (max_lease)" in text
    # psycopg2.pool still has the forgotten connection checked out at the end: its lane
    # shows it as leaked in the final frame.
    final = text[text.rindex("╭─ psycopg2") :]
    assert "X leaked" in text and " leaked " in final.split("╰")[0]


def test_restart_scenario_restarts_the_server(restartable_server: EmbeddedPostgres) -> None:
    text = _run("restart", restartable_server.dsn, server=restartable_server)
    _check_plain(text, ["pgpool"])
    assert "stopping (pg_ctl stop -m fast)" in text
    assert "s after the stop" in text


def test_side_by_side_and_record(dsn: str, tmp_path: Path) -> None:
    svg = tmp_path / "frame.svg"
    text = _run("contention", dsn, ["pgpool", "psycopg2"], record=svg)
    _check_plain(text, ["pgpool", "psycopg2"])
    assert "╭─ pgpool (4 lanes)" in text and "psycopg2 (4 lanes)" in text
    content = svg.read_text()
    assert content.startswith("<svg") and "c1" in content and "psycopg2" in content
    # Recorded for offline viewing: no web font, every run of text stretched to its width.
    assert "@font-face" not in content and 'lengthAdjust="spacingAndGlyphs"' in content


def test_a_course_pool_runs_beside_pgpool(dsn: str) -> None:
    # Three pools do not fit side by side in 80 columns: they are stacked.
    text = _run("contention", dsn, ["pgpool", "psycopg2", "fifo"])
    _check_plain(text, ["pgpool", "psycopg2", "fifo"])
    assert "╭─ fifo (4 lanes)" in text


def test_command_line_rejects_an_unknown_pool(dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["steady", "--short", "--dsn", dsn, "--pool", "nosuchpool"]) == 2
    assert "unknown pool 'nosuchpool'" in capsys.readouterr().err


def test_restart_on_a_server_it_does_not_own_kills_only_its_sessions(dsn: str) -> None:
    # With --dsn the demo may not restart the server: it terminates its own sessions
    # (application_name pgpool-demo), which the pool must survive the same way.
    text = _run("restart", dsn)
    _check_plain(text, ["pgpool"])
    assert "not ours to restart: terminating the demo's sessions" in text


def test_command_line_says_when_it_cannot_connect(capsys: pytest.CaptureFixture[str]) -> None:
    dsn = "host=127.0.0.1 port=1 password=not-to-be-printed connect_timeout=2"
    assert main(["steady", "--short", "--dsn", dsn]) == 2
    err = capsys.readouterr().err
    assert "python -m demo: cannot connect:" in err
    assert "not-to-be-printed" not in err


def test_squeeze_keeps_the_busiest_state_of_each_stretch() -> None:
    from demo.view import squeeze

    history = ["idle", "in use", "idle", "idle", "empty", "connecting"]
    assert squeeze(history, 10) == history  # fits: unchanged
    assert squeeze(history, 3) == ["in use", "idle", "connecting"]
    assert squeeze(["leaked", "in use"], 1) == ["leaked"]


def test_a_connection_keeps_its_lane_while_others_come_and_go() -> None:
    from demo.adapter import CourseAdapter

    a, b, c = object(), object(), object()
    idle: list[object] = []
    held: list[object] = []

    class Pool:
        _idle = idle
        _connecting = 0

    adapter = CourseAdapter(Pool(), 3, lambda: list(held))
    held[:] = [a, b]
    assert adapter.snapshot().lanes == ("in use", "in use", "empty")
    held[:] = [b]  # a closed: its lane is freed, b stays in lane 2
    Pool._connecting = 1
    assert adapter.snapshot().lanes == ("connecting", "in use", "empty")
    Pool._connecting = 0
    held[:] = [b, c]  # c takes the first free lane
    idle[:] = []
    assert adapter.snapshot().lanes == ("in use", "in use", "empty")
    held[:] = [c]
    idle[:] = [b]  # b returned: same lane, now idle
    assert adapter.snapshot().lanes == ("in use", "idle", "empty")
