"""The figures quoted in README.md and docs/ agree with the committed results they come from.

A bench figure written by hand drifts: the next run changes the results and the prose stays.
Each quoted figure is written below as a template over values read from the committed run
(docs/bench/results.json.gz); the rendered text must occur in the page. A new full run that
moves a figure fails here until the page says what the run measured. The demo's frames
(docs/demo/*.svg) are the results docs/demo.md quotes: its numbers are checked against
the frame's text the same way.
"""

# The claims below are page text, one per line, so that each reads as the page does.
# ruff: noqa: E501

from __future__ import annotations

import gzip
import html
import json
import re
from pathlib import Path
from typing import Any

import pytest

from benchmarks import spike

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "bench" / "results.json.gz"
PG, P2 = "pgpool-threaded", "psycopg2-threaded"


def _values() -> dict[str, Any]:
    with gzip.open(RESULTS, "rt", encoding="utf-8") as file:
        results = json.load(file)
    s = results["scenarios"]

    def med(row: dict[str, Any], metric: str) -> float:
        return float(row[metric]["median"])

    cyc = {v: s["cycle"]["variants"][v]["rows"] for v in ("noop", "select1")}
    con = {v: s["contention"]["variants"][v]["rows"] for v in ("select1", "sleep2ms")}
    one = s["contention"]["variants"]["select1_one_cpu"]["rows"]
    churn, spk, unp = s["churn"]["rows"], s["spike"]["rows"], s["unpooled"]["rows"]
    scale = s["scale"]
    goals = results["goals"]
    v: dict[str, Any] = {
        "noop_pg": med(cyc["noop"][PG], "us"),
        "noop_p2": med(cyc["noop"][P2], "us"),
        "noop_best": med(cyc["noop"]["psycopg2-pool-ts"], "us"),
        "sel_pg": med(cyc["select1"][PG], "us"),
        "sel_p2": med(cyc["select1"][P2], "us"),
        "sel_best": med(cyc["select1"]["psycopg2-pool-ts"], "us"),
        "con_pg": med(con["select1"][PG], "qps"),
        "con_p2": med(con["select1"][P2], "qps"),
        "con_psycopg": med(con["select1"]["psycopg_pool"], "qps"),
        "con_wait_pg": med(con["select1"][PG], "wait_max_ms"),
        "con_wait_p2": med(con["select1"][P2], "wait_max_ms"),
        "con_wait_psycopg": med(con["select1"]["psycopg_pool"], "wait_max_ms"),
        "con_fair_pg": med(con["select1"][PG], "fair_min_max"),
        "con_ts_peak": con["select1"]["psycopg2-pool-ts"]["sessions"]["peak"],
        "work_pg": med(con["sleep2ms"][PG], "qps"),
        "work_p2": med(con["sleep2ms"][P2], "qps"),
        "work_wait_pg": med(con["sleep2ms"][PG], "wait_max_ms"),
        "work_wait_p2": med(con["sleep2ms"][P2], "wait_max_ms"),
        "work_wait_psycopg": med(con["sleep2ms"]["psycopg_pool"], "wait_max_ms"),
        "one_pg": med(one[PG], "qps"),
        "one_p2": med(one[P2], "qps"),
        "churn_pg": med(churn[PG], "qps"),
        "churn_p2": med(churn[P2], "qps"),
        "churn_ts": med(churn["psycopg2-pool-ts"], "qps"),
        "churn_rc_pg": med(churn[PG], "reconnects_per_1k"),
        "churn_rc_p2": med(churn[P2], "reconnects_per_1k"),
        "spike_pg": med(spk[PG], "served_s") * 1e3,
        "spike_p2": med(spk[P2], "served_s") * 1e3,
        "spike_psycopg": med(spk["psycopg_pool"], "served_s") * 1e3,
        "spike_open_pg": med(spk[PG], "opened_after_settle"),
        "spike_open_p2": med(spk[P2], "opened_after_settle"),
        "spike_open_psycopg": med(spk["psycopg_pool"], "opened_after_settle"),
        "scale_idle_pg": scale["maxconn"]["idle"][PG]["largest_vs_ref"],
        "scale_idle_p2": scale["maxconn"]["idle"][P2]["largest_vs_ref"],
        "scale_idle_sqla": scale["maxconn"]["idle"]["sqlalchemy"]["largest_vs_ref"],
        "scale_thr_pg": scale["threads"][PG]["largest_vs_ref"],
        "scale_thr_p2": scale["threads"][P2]["largest_vs_ref"],
        "scale_thr_sqla": scale["threads"]["sqlalchemy"]["largest_vs_ref"],
        "unpooled": med(unp["connect-per-request"], "us"),
        "pooled": med(unp[PG], "us"),
        "goals": len(goals),
        "goals_met": sum(1 for goal in goals if goal["met"]),
        # the cycle goal: each pool above its own lock floor
        "noop_lock_pg": cyc["noop"][PG]["above_lock_us"],
        "noop_lock_p2": cyc["noop"][P2]["above_lock_us"],
        "noop_lock_x": cyc["noop"][PG]["above_lock_vs_baseline"],
        "noop_paired": cyc["noop"][PG]["vs_baseline"],
        "floor_with": med(cyc["noop"]["lock-with"], "us"),
        "floor_try": med(cyc["noop"]["lock-try"], "us"),
        "sel_lock_pg": cyc["select1"][PG]["above_lock_us"],
        "sel_lock_p2": cyc["select1"][P2]["above_lock_us"],
        "wake_one": s["contention"]["wakeup"]["same_cpu_us"]["median"],
        "wake_two": s["contention"]["wakeup"]["cross_cpu_us"]["median"],
        "imp_pg": med(s["import"]["rows"]["pgpool"], "ms"),
        "imp_p2": med(s["import"]["rows"]["psycopg2"], "ms"),
        "imp_pg_mib": med(s["import"]["rows"]["pgpool"], "mib"),
        "imp_p2_mib": med(s["import"]["rows"]["psycopg2"], "mib"),
        "imp_x": s["import"]["rows"]["pgpool"]["vs_baseline"],
        "imp_over": s["import"]["rows"]["pgpool"]["mib_over_baseline"],
        "imp_psycopg": med(s["import"]["rows"]["psycopg_pool"], "ms"),
        "imp_sqla": med(s["import"]["rows"]["sqlalchemy"], "ms"),
        "dj_pg": med(s["django"]["rows"]["pgpool"], "rps"),
        "dj_ddcp": med(s["django"]["rows"]["ddcp"], "rps"),
        "dj_failed_pg": s["django"]["rows"]["pgpool"]["restart"]["failed"],
        "dj_failed_ddcp": s["django"]["rows"]["ddcp"]["restart"]["failed"],
    }
    # The "best other pool" of a contention line: the most q/s among the other pools that
    # kept within maxconn, as the report's headline picks it.
    labels = s["contention"]["labels"]
    for name, rows in (("con", con["select1"]), ("work", con["sleep2ms"]), ("one", one)):
        others = {
            k: med(r, "qps")
            for k, r in rows.items()
            if k not in (PG, P2) and not r["sessions"]["over"]
        }
        key = max(others, key=others.__getitem__)
        v[f"{name}_best"], v[f"{name}_best_label"] = others[key], labels[key]
    for key, row in scale["threads"].items():  # microseconds 256 threads add
        v[f"add_{key}"] = (row["ns"]["256"]["median"] - row["ns"]["1"]["median"]) / 1e3
    for size, row in s["sizing"]["rows"].items():
        for metric in ("qps", "request_p50_ms", "request_p99_ms", "query_p50_ms"):
            v[f"sz{size}_{metric}"] = med(row, metric)
    machine = results["meta"]["machine"]
    v["run_date"] = results["meta"]["started"][:10]
    v["load_start"], v["load_end"] = machine["loadavg_at_start"][0], machine["loadavg_at_end"][0]
    v["noop_p2pool"] = med(cyc["noop"]["psycopg2-pool"], "us")
    fleet_rows = s["fleet"]["rows"]
    for query in ("select1", "sleep2ms"):
        kept, null = fleet_rows[query]["pgbouncer-16"], fleet_rows[query]["null-pgbouncer-16"]
        v[f"fl_{query}_kept"], v[f"fl_{query}_null"] = med(kept, "tps"), med(null, "tps")
        v[f"fl_{query}_null_share"] = 100 * med(null, "tps") / med(kept, "tps")
        v[f"fl_{query}_starved"] = fleet_rows[query]["limited-direct"]["starved_processes"]
        v[f"fl_{query}_served"] = s["fleet"]["settings"]["processes"] - v[f"fl_{query}_starved"]
        v[f"fl_{query}_null_clients"] = null["client_connections"]
    null1, kept1 = fleet_rows["select1"]["null-pgbouncer-16"], fleet_rows["select1"]["pgbouncer-16"]
    v["fl_null_p50"], v["fl_kept_p50"] = med(null1, "p50_ms"), med(kept1, "p50_ms")
    v["fl_null_connects"], v["fl_kept_connects"] = null1["connects"], kept1["connects"]
    v["fl_kept_clients"] = kept1["client_connections"]
    v["sz_query_growth"] = v["sz32_query_p50_ms"] / v["sz8_query_p50_ms"]
    v["noop_x"] = v["noop_pg"] / v["noop_p2"]
    v["sel_x"] = v["sel_pg"] / v["sel_p2"]
    v["con_x"] = v["con_pg"] / v["con_p2"]
    v["con_vs_psycopg"] = v["con_pg"] / v["con_psycopg"]
    v["con_vs_best"] = v["con_pg"] / v["con_best"]
    v["one_x"] = v["one_pg"] / v["one_p2"]
    v["work_x"] = v["work_pg"] / v["work_p2"]
    v["churn_x"] = v["churn_pg"] / v["churn_p2"]
    v["unpooled_x"] = v["unpooled"] / v["pooled"]
    v["unpooled_ms"] = v["unpooled"] / 1e3
    v["work_wait_p2_s"] = v["work_wait_p2"] / 1e3
    v["floor_gap"] = v["floor_with"] - v["floor_try"]
    v["whole_gap"] = v["noop_pg"] - v["noop_p2"]
    spread = con["select1"][P2]["qps"]
    v["con_p2_spread"] = (spread["p75"] - spread["p25"]) / 2 / spread["median"] * 100
    v["spike_p2_s"] = v["spike_p2"] / 1e3
    return v


# (page, text with {value:format} fields): the rendered text must occur in the page.
CLAIMS = [
    ("README.md", "| seed configuration `(1, 3)`, 3 threads: queries per second | {churn_pg:,.0f} | {churn_p2:,.0f} | pgpool {churn_x:.1f}x faster; {churn_rc_pg:.0f} connects against {churn_rc_p2:.0f} per 1000 requests |"),
    ("README.md", "| 50 threads at once, 150 ms connects: until all are served | {spike_pg:,.0f} ms | {spike_p2:,.0f} ms | pgpool opens {spike_open_pg:.0f} connection, psycopg2.pool {spike_open_p2:.0f} (psycopg_pool: {spike_psycopg:,.0f} ms, {spike_open_psycopg:.0f}) |"),
    ("README.md", "| 16 threads on 4 connections, `SELECT 1`: worst checkout wait | {con_wait_pg:,.1f} ms | {con_wait_p2:,.0f} ms |"),
    ("README.md", "| ... and queries per second | {con_pg:,.0f} | {con_p2:,.0f} | ... which makes it faster: pgpool {con_x:.2f}x ({one_x:.2f}x on one CPU), {con_vs_psycopg:.1f}x psycopg_pool, {con_vs_best:.2f}x the best other pool within its maxconn |"),
    ("README.md", "| 16 threads on 4 connections, 2 ms queries: queries per second | {work_pg:,.0f} | {work_p2:,.0f} | pgpool {work_x:.2f}x, worst wait {work_wait_pg:.1f} ms against {work_wait_p2_s:.0f} s |"),
    ("README.md", "| one thread, checkout + return, no query | {noop_pg:.2f} µs | {noop_p2:.2f} µs | pgpool {noop_x:.2f}x slower"),
    ("README.md", "| one thread, checkout + `SELECT 1` + return | {sel_pg:.1f} µs | {sel_p2:.1f} µs | pgpool {sel_x:.2f}x slower"),
    ("README.md", "| `import pgpool` in a fresh interpreter | {imp_pg:.1f} ms | {imp_p2:.1f} ms | pgpool {imp_x:.2f}x, and {imp_over:.1f} MiB more memory (psycopg_pool: {imp_psycopg:.1f} ms) |"),
    ("README.md", "| Django, 32 threads, pools capped at 10: requests per second | {dj_pg:,.0f} | — | the pgpool ENGINE; django-db-connection-pool {dj_ddcp:,.0f}; failed requests across a server restart: {dj_failed_pg} against its {dj_failed_ddcp} |"),
    ("README.md", "A new connection per request instead of a pool: {unpooled:,.0f} µs per `SELECT 1`, {unpooled_x:.0f}x slower."),
    ("docs/benchmarks.md", "| cycle: checkout + return | {noop_pg:.2f} µs | {noop_p2:.2f} µs | {noop_x:.2f}x | {noop_best:.2f} µs (psycopg2-pool TS) |"),
    ("docs/benchmarks.md", "| cycle: ... + SELECT 1 | {sel_pg:.1f} µs | {sel_p2:.1f} µs | {sel_x:.2f}x | {sel_best:.1f} µs (psycopg2-pool TS) |"),
    ("docs/benchmarks.md", "| contention SELECT 1: q/s | {con_pg:,.0f} | {con_p2:,.0f} | {con_x:.2f}x | {con_best:,.0f} ({con_best_label}) |"),
    ("docs/benchmarks.md", "| contention SELECT 1: max wait | {con_wait_pg:.1f} ms | {con_wait_p2:,.0f} ms | — | {con_wait_psycopg:.1f} ms (psycopg_pool) |"),
    ("docs/benchmarks.md", "| contention 2 ms work: q/s | {work_pg:,.0f} | {work_p2:,.0f} | {work_x:.2f}x | {work_best:,.0f} ({work_best_label}) |"),
    ("docs/benchmarks.md", "| contention 2 ms work: max wait | {work_wait_pg:.1f} ms | {work_wait_p2:,.0f} ms | — | {work_wait_psycopg:.1f} ms (psycopg_pool) |"),
    ("docs/benchmarks.md", "| contention, one CPU: q/s | {one_pg:,.0f} | {one_p2:,.0f} | {one_x:.2f}x | {one_best:,.0f} ({one_best_label}) |"),
    ("docs/benchmarks.md", "| churn (1, 3): q/s | {churn_pg:,.0f} | {churn_p2:,.0f} | {churn_x:.2f}x | {churn_ts:,.0f} (psycopg2-pool TS) |"),
    ("docs/benchmarks.md", "| churn: connects per 1000 requests | {churn_rc_pg:.0f} | {churn_rc_p2:.0f} |"),
    ("docs/benchmarks.md", "| spike: all 50 served | {spike_pg:,.0f} ms | {spike_p2:,.0f} ms | — | {spike_psycopg:,.0f} ms (psycopg_pool) |"),
    ("docs/benchmarks.md", "| spike: connections opened | {spike_open_pg:.0f} | {spike_open_p2:.0f} | — | {spike_open_psycopg:.0f} (psycopg_pool) |"),
    ("docs/benchmarks.md", "| scale: cost at maxconn 1000 / at 4 | {scale_idle_pg:.2f}x | {scale_idle_p2:.2f}x | — | {scale_idle_sqla:.2f}x (SQLAlchemy) |"),
    ("docs/benchmarks.md", "| scale: cost at 256 threads / at 1 | {scale_thr_pg:.2f}x | {scale_thr_p2:.2f}x | — | {scale_thr_sqla:.2f}x (SQLAlchemy) |"),
    ("docs/benchmarks.md", "| SELECT 1 with a new connection per request | {unpooled:,.0f} µs: {unpooled_x:.0f}x slower than through pgpool |"),
    ("docs/benchmarks.md", "on the quiet machine pgpool made {con_pg:,.0f} q/s and psycopg2's loop {con_p2:,.0f}"),
    ("docs/benchmarks.md", "Pinned to one CPU, the same contention reaches {one_x:.2f}x."),
    ("docs/benchmarks.md", "ThreadSafeConnectionPool opened {con_ts_peak} sessions against a `maxconn` of 4"),
    ("docs/benchmarks.md", "a new connection per request costs ~{unpooled_ms:.1f} ms"),
    ("docs/benchmarks.md", "a pooled `SELECT 1` costs ~{pooled:.0f} µs."),
    ("docs/benchmarks.md", "pgpool is the faster of the two fair pools ({con_vs_psycopg:.1f}x psycopg_pool here)"),
    ("docs/benchmarks.md", "it opened {con_ts_peak} connections where 4 were\n  allowed"),
    ("docs/benchmarks.md", "connects 45 times, one after another under its lock ({spike_p2_s:.0f} s)"),
    ("docs/benchmarks.md", "{goals_met} of {goals} goals met in this run"),
    ("docs/benchmarks.md", "pgpool's max wait is {work_wait_pg:.1f} ms against their {work_wait_p2_s:.0f} s."),
    ("docs/benchmarks.md", "(±0.4 % and ±{con_p2_spread:.0f} % between repetitions), {con_x:.2f}x"),
    ("docs/benchmarks.md", "({wake_two:.1f} µs here, against\n{wake_one:.1f} µs on one CPU"),
    ("docs/benchmarks.md", "committed run: pgpool {imp_pg:.1f} ms and +{imp_pg_mib:.1f} MiB, psycopg2.pool {imp_p2:.1f} ms and +{imp_p2_mib:.1f} MiB (paired\n  ratio {imp_x:.2f}x, +{imp_over:.1f} MiB"),
    ("docs/benchmarks.md", "psycopg_pool {imp_psycopg:.1f} ms and\n  sqlalchemy.pool {imp_sqla:.1f} ms."),
    ("docs/benchmarks.md", "(1.8x psycopg_pool, fairness {con_fair_pg:.2f}); with `SELECT 1`, its time above its\nlock floor is {sel_lock_pg:.2f} µs against psycopg2's {sel_lock_p2:.2f} µs; `import pgpool` takes {imp_pg:.1f} ms against\npsycopg2.pool's {imp_p2:.1f} ms (paired {imp_x:.2f}x, goal 1.5x) and adds {imp_over:.1f} MiB more (goal 2 MiB); the\nDjango ENGINE serves {dj_pg:,.0f} requests/s against django-db-connection-pool's {dj_ddcp:,.0f} and failed\n{dj_failed_pg} requests across a server restart against its {dj_failed_ddcp}."),
    ("docs/benchmarks.md", "**Cycle, no query: pgpool's bookkeeping {noop_lock_x:.2f}x psycopg2's (goal ≤ 1.15x).**"),
    ("docs/benchmarks.md", "+{noop_lock_pg:.2f} µs above `with lock:` ({floor_with:.2f} µs), psycopg2.pool +{noop_lock_p2:.2f} µs above `acquire()` /\n   `try` / `finally` ({floor_try:.2f} µs). Whole, {noop_pg:.2f} µs against {noop_p2:.2f} µs, paired {noop_paired:.2f}x."),
    ("docs/benchmarks.md", "The two floors differ by {floor_gap:.2f} µs,\n   close to half of the {whole_gap:.2f} µs between the whole times."),
    ("docs/benchmarks.md", "0.95x).** psycopg2's figure comes from starving threads"),
    ("docs/benchmarks.md", "**Contention `SELECT 1`, everything on one CPU: {one_x:.2f}x psycopg2's retry loop (goal ≥\n   0.95x).**"),
    ("docs/benchmarks.md", "hand-off: {wake_one:.1f} µs on one CPU and {wake_two:.1f} µs across two (the report's ping-pong of two\n   threads), which is why the same pools give {con_x:.2f}x on 2 CPUs."),
    ("docs/benchmarks.md", "**Contention `SELECT 1`: worst wait {con_wait_pg:.1f} ms against psycopg_pool's {con_wait_psycopg:.1f} ms (goal ≤).**"),
    ("docs/benchmarks.md", "**Contention with 2 ms of work: worst wait {work_wait_pg:.1f} ms against psycopg_pool's {work_wait_psycopg:.1f} ms (goal\n   ≤).**"),
    ("docs/benchmarks.md", "(it is {work_x:.2f}x psycopg2's)"),
    ("docs/benchmarks.md", "**Scale, 256 threads: pgpool adds {add_pgpool-threaded:.1f} µs to a checkout + return, psycopg2 Threaded\n   {add_psycopg2-threaded:.1f} µs (goal ≤).** A bare Lock + list adds {add_lock-floor:.1f} µs and SQLAlchemy {add_sqlalchemy:.1f} µs."),
    ("docs/benchmarks.md", "(pgpool {scale_thr_pg:.2f}x against\n   SQLAlchemy's {scale_thr_sqla:.2f}x)"),
    ("docs/sizing.md", "the\nmedian query took {sz1_query_p50_ms:.1f} ms."),
    ("docs/sizing.md", "([Benchmarks](benchmarks.md): {run_date}, a 2-vCPU virtual machine"),
    ("docs/sizing.md", "load average {load_start:.1f} when it started\nand {load_end:.1f} when it ended"),
    ("docs/sizing.md", "{sz1_qps:,.0f} queries/s\n  with one connection, {sz8_qps:,.0f} with eight. The median request gets faster with it ({sz1_request_p50_ms:.1f} ms\n  to {sz8_request_p50_ms:.1f} ms)"),
    ("docs/sizing.md", "hardly moves up to 4 connections ({sz1_query_p50_ms:.2f} ms to {sz4_query_p50_ms:.2f} ms), then grows\n  ({sz8_query_p50_ms:.2f} ms at 8)"),
    ("docs/sizing.md", "fastest at 6 (p99 {sz6_request_p99_ms:.1f} ms)"),
    ("docs/sizing.md", "({sz8_qps:,.0f} to {sz32_qps:,.0f} queries/s, {sz12_qps:,.0f} at 12)"),
    ("docs/sizing.md", "takes {sz_query_growth:.1f} times as long\n  ({sz8_query_p50_ms:.2f} ms to {sz32_query_p50_ms:.2f} ms)"),
    ("docs/sizing.md", "(p99 {sz8_request_p99_ms:.1f} ms to {sz32_request_p99_ms:.1f} ms)"),
    ("docs/sizing.md", "({sz8_request_p50_ms:.1f} ms at 8, {sz32_request_p50_ms:.1f} ms at 32)"),
    ("docs/deploying.md", "([Benchmarks](benchmarks.md):\n{run_date}, a 2-vCPU machine"),
    ("docs/deploying.md", "took the 6 slots and {fl_select1_starved} of the 8 processes ({fl_sleep2ms_starved} with the 2 ms\n  query) got none"),
    ("docs/deploying.md", "those of the {fl_select1_served} (or {fl_sleep2ms_served}) lucky processes"),
    ("docs/deploying.md", "null pool opened {fl_null_connects:,} connections in one run (4.5 s, warm-up included) where the pools\nthat keep theirs opened {fl_kept_connects}, and served {fl_select1_null:,.0f} transactions/s against\n{fl_select1_kept:,.0f} ({fl_select1_null_share:.0f} %), with a median transaction of {fl_null_p50:.2f} ms against {fl_kept_p50:.2f} ms."),
    ("docs/deploying.md", "it kept {fl_sleep2ms_null_share:.0f} % of the\nrate ({fl_sleep2ms_null:,.0f} against {fl_sleep2ms_kept:,.0f})."),
    ("docs/deploying.md", "at most {fl_select1_null_clients} were\nconnected to PgBouncer at once ({fl_sleep2ms_null_clients} with the 2 ms query; sampled every 0.1 s), against {fl_kept_clients}."),
    ("docs/compat.md", "in the committed full bench run ({run_date}), a checkout"),
    ("docs/compat.md", "ThreadedConnectionPool ({noop_best:.2f} µs\nagainst {noop_p2:.2f} µs: an `RLock`"),
    ("docs/compat.md", "lock and all ({noop_p2pool:.2f} µs)."),
    ("docs/compat.md", "it had {con_ts_peak} open at once (the committed full run of {run_date})"),
]  # fmt: skip


@pytest.fixture(scope="module")
def values() -> dict[str, Any]:
    return _values()


@pytest.mark.parametrize(("page", "claim"), CLAIMS, ids=lambda c: c[:48] if "|" in c else c)
def test_quoted_figure_matches_the_committed_run(
    page: str, claim: str, values: dict[str, Any]
) -> None:
    text = (ROOT / page).read_text(encoding="utf-8")
    expected = claim.format_map(values)
    assert expected in text, f"{page} should say, from {RESULTS.name}:\n{expected}"


def test_a_drifted_figure_is_caught(values: dict[str, Any]) -> None:
    # Guards the check: the same claim with another run's value no longer matches.
    moved = {**values, "churn_pg": values["churn_pg"] * 1.5}
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert CLAIMS[0][1].format_map(values) in text
    assert CLAIMS[0][1].format_map(moved) not in text


def test_spike_docstring_states_the_quick_connect_delay() -> None:
    assert f"uses {spike.QUICK_CONNECT_DELAY * 1e3:.0f} ms connects" in (spike.__doc__ or "")


# -- the demo's page against its own frames -------------------------------------------------


def frame_text(name: str) -> str:
    """The text of a recorded frame, one space between words."""
    svg = (ROOT / "docs" / "demo" / f"{name}.svg").read_text(encoding="utf-8")
    texts = re.findall(r"<text[^>]*>(.*?)</text>", svg, re.DOTALL)
    plain = " ".join(html.unescape(re.sub(r"<[^>]+>", "", t)) for t in texts)
    return " ".join(plain.replace("\xa0", " ").split())


# (frame, what docs/demo.md says, what the frame shows): both must occur.
DEMO_CLAIMS = [
    ("contention", "the longest wait was 69 ms", "longest wait 69 ms"),
    ("contention", "wait for the whole run (12.1 s\nhere)", "longest wait 12,054 ms"),
    ("restart", "6 failed\nrequests in this run, against psycopg2.pool's 247", "errors 6"),
    ("restart", "6 failed\nrequests in this run, against psycopg2.pool's 247", "errors 247"),
    ("restart", "its longest wait was 3.2 s", "longest wait 3,205 ms"),
    ("restart", "(at 7.4 s, against 6.3 s)", "7.4s pgpool opened 6 connection(s)"),
    ("restart", "(at 7.4 s, against 6.3 s)", "6.3s server back"),
    ("restart", "(655 connects in 14 s)", "errors 247 opened 655"),
    ("spike", "82 connects for 195 queries", "queries 195 errors 0 opened 82"),
    ("spike", "against pgpool's 10\nfor 2,147", "queries 2,147 errors 0 opened 10"),
    ("spike", "a longest wait of 4.6 s against 0.2 s", "longest wait 4,574 ms"),
    ("spike", "a longest wait of 4.6 s against 0.2 s", "longest wait 223 ms"),
    ("spike", "one connect at a time", "'connecting' one at a time"),
    ("steady", "the pool grows to four connections and no further", "opened 4 longest wait"),
    ("leak", "pgpool takes it back after four seconds", "reclaimed 1"),
]


@pytest.mark.parametrize(("frame", "page_says", "frame_shows"), DEMO_CLAIMS)
def test_demo_page_quotes_its_frame(frame: str, page_says: str, frame_shows: str) -> None:
    page = (ROOT / "docs" / "demo.md").read_text(encoding="utf-8")
    assert page_says in page, f"docs/demo.md no longer says {page_says!r}"
    assert frame_shows in frame_text(frame), f"docs/demo/{frame}.svg does not show {frame_shows!r}"


# -- sizing.md: its table is the committed run's sizing scenario ----------------------------


def sizing_table() -> str:
    with gzip.open(RESULTS, "rt", encoding="utf-8") as file:
        rows = json.load(file)["scenarios"]["sizing"]["rows"]
    lines = [
        "| maxconn | queries/s | request p50 ms | request p99 ms | query p50 ms | query p99 ms |",
        "|--:|--:|--:|--:|--:|--:|",
    ]
    for size, row in sorted(rows.items(), key=lambda kv: int(kv[0])):
        m = {k: v["median"] for k, v in row.items() if isinstance(v, dict) and "median" in v}
        lines.append(
            f"| {size} | {m['qps']:,.0f} | {m['request_p50_ms']:.1f} | {m['request_p99_ms']:.1f}"
            f" | {m['query_p50_ms']:.2f} | {m['query_p99_ms']:.2f} |"
        )
    return "\n".join(lines)


def test_sizing_table_is_the_committed_run() -> None:
    page = (ROOT / "docs" / "sizing.md").read_text(encoding="utf-8")
    assert sizing_table() in page, (
        f"docs/sizing.md should carry, from {RESULTS.name}:\n{sizing_table()}"
    )


# -- chapter 4b: its table and figures are the committed run's ------------------------------

BARGING = ROOT / "docs" / "learn" / "barging" / "results.json"


def test_barging_chapter_shows_the_committed_run() -> None:
    from course.step4b_barging import table

    results = json.loads(BARGING.read_text(encoding="utf-8"))
    page = (ROOT / "docs" / "learn" / "04b-barging.md").read_text(encoding="utf-8")
    assert table(results) in page, (
        f"04b-barging.md should show, from {BARGING.name}:\n{table(results)}"
    )
    rows = {row["label"]: row for row in results["rows"]}
    never, strict = rows["barging, patience inf ms"], rows["barging, patience 0 ms"]
    long, pg = rows["barging, patience 20 ms"], rows["pgpool"]
    load = results["loadavg"]
    for quoted in (
        f"{never['qps']:,.0f} queries/s against\n  {strict['qps']:,.0f} for the strict hand-off",
        f"{long['worst_ms']:.1f} ms at 20 ms, while fairness falls from\n  {strict['fairness']:.2f} to {long['fairness']:.2f}",
        f"({pg['qps']:,.0f} queries/s, worst wait {pg['worst_ms']:.1f} ms, fairness {pg['fairness']:.2f})",
        f"(load average\n{load['before']:g} when it started, {load['after']:g} when it ended)",
    ):
        assert quoted in page, quoted
    assert never["fairness"] < 0.005 and all(
        r["qps"] <= strict["qps"] for r in results["rows"][1:7]
    ), "the chapter says every finite patience was at or below the strict hand-off"


# -- reliability.md: the long chaos run's table is its committed record ---------------------


def test_reliability_quotes_the_committed_chaos_run() -> None:
    chaos = json.loads((ROOT / "docs" / "chaos-latest.json").read_text(encoding="utf-8"))
    page = (ROOT / "docs" / "reliability.md").read_text(encoding="utf-8")
    errors, faults = chaos["errors"], chaos["faults"]
    for quoted in (
        f"({chaos['seconds']:.0f} s, seed {chaos['seed']},",
        f"| operations | {chaos['operations']:,} |",
        f"| {chaos['committed']:,} / {chaos['rolled_back']:,} / {chaos['unknown']:,} |",
        f"`OperationalError` {errors['OperationalError']}, `DatabaseError`"
        f" {errors['DatabaseError']}, `QueryCanceled` {errors['QueryCanceled']}",
        f"| forgotten connections reclaimed (`max_lease`) | {chaos['leases_reclaimed']} |",
        f"| kill all {faults['kill_all']}, kill some {faults['kill_some']}, fast restart"
        f" {faults['restart_fast']}, immediate restart {faults['restart_immediate']}, black hole"
        f" {faults['blackhole']}, links dropped {faults['drop_links']} |",
        f"| largest pool size | {chaos['max_pool_size']} (never over `maxconn` {chaos['maxconn']}) |",
    ):
        assert quoted in page, f"docs/reliability.md should say, from chaos-latest.json: {quoted}"


# -- deploying.md: the fleet table is the committed run's fleet scenario --------------------

FLEET_ROWS = (
    "direct",
    "pgbouncer-16",
    "pgbouncer-8",
    "null-pgbouncer-16",
    "limited-direct",
    "limited-pgbouncer-6",
)
FLEET_NAMES = {
    "direct": "direct",
    "pgbouncer-16": "PgBouncer, pool 16",
    "pgbouncer-8": "PgBouncer, pool 8",
    "null-pgbouncer-16": "null pool, PgBouncer 16",
    "limited-direct": "direct, 6 allowed",
    "limited-pgbouncer-6": "PgBouncer 6, 6 allowed",
}


def fleet() -> dict[str, Any]:
    with gzip.open(RESULTS, "rt", encoding="utf-8") as file:
        rows: dict[str, Any] = json.load(file)["scenarios"]["fleet"]["rows"]
    return rows


def fleet_table() -> str:
    lines = [
        "| to the server | query | transactions/s | p50 ms | p99 ms | server conns"
        " | client conns | processes that served nothing |",
        "|:--|--|--:|--:|--:|--:|--:|--:|",
    ]
    queries = {"select1": "`SELECT 1`", "sleep2ms": "`pg_sleep(0.002)`"}
    for query, rows in fleet().items():
        for key in FLEET_ROWS:
            r = rows[key]
            tps = r["tps"]
            starved = r["starved_processes"]
            lines.append(
                f"| {FLEET_NAMES[key]} | {queries[query]} | {tps['median']:,.0f}"
                f" ±{(tps['max'] - tps['min']) / 2:,.0f} | {r['p50_ms']['median']:.2f}"
                f" | {r['p99_ms']['median']:.2f} | {r['server_connections']}"
                f" | {r['client_connections']} | {f'**{starved} of 8**' if starved else 0} |"
            )
    return "\n".join(lines)


def test_fleet_table_is_the_committed_run() -> None:
    page = (ROOT / "docs" / "deploying.md").read_text(encoding="utf-8")
    assert fleet_table() in page, (
        f"deploying.md should carry, from {RESULTS.name}:\n{fleet_table()}"
    )
    rows = fleet()

    def share(query: str, key: str) -> float:
        return 100 * rows[query][key]["tps"]["median"] / rows[query]["direct"]["tps"]["median"]

    for quoted in (
        f"{share('select1', 'pgbouncer-16'):.0f} % and {share('select1', 'pgbouncer-8'):.0f} %"
        " of the direct\n  throughput",
        f"16 give {share('sleep2ms', 'pgbouncer-16'):.0f} % of the direct rate,"
        f" 8 give {share('sleep2ms', 'pgbouncer-8'):.0f} %,\n"
        f"  6 give {share('sleep2ms', 'limited-pgbouncer-6'):.0f} %",
    ):
        assert quoted in page, quoted


# -- django.md: its table and figures are the committed run's django scenario ---------------

DJANGO_NAMES = {
    "max_age_0": "`CONN_MAX_AGE=0` (Django's default)",
    "max_age_none": "`CONN_MAX_AGE=None`",
    "pgpool": "pgpool ENGINE",
    "ddcp": "django-db-connection-pool",
}


def django() -> dict[str, Any]:
    with gzip.open(RESULTS, "rt", encoding="utf-8") as file:
        scenario: dict[str, Any] = json.load(file)["scenarios"]["django"]
    return scenario


def django_table() -> str:
    lines = [
        "| Django with | req/s | connects / 1,000 req | p50 ms | p99 ms | server sessions"
        " | failed across the restart |",
        "|---|--:|--:|--:|--:|--:|--:|",
    ]
    for key, name in DJANGO_NAMES.items():
        r = django()["rows"][key]
        rps = r["rps"]
        lines.append(
            f"| {name} | {rps['median']:,.0f} ±{(rps['p75'] - rps['p25']) / 2:,.0f}"
            f" | {r['connects_per_1000']['median']:,.0f} | {r['p50_ms']['median']:.0f}"
            f" | {r['p99_ms']['median']:.0f} | {r['server_sessions']} | {r['restart']['failed']} |"
        )
    return "\n".join(lines)


def test_django_page_quotes_the_committed_run() -> None:
    page = (ROOT / "docs" / "django.md").read_text(encoding="utf-8")
    assert django_table() in page, (
        f"docs/django.md should carry, from {RESULTS.name}:\n{django_table()}"
    )
    rows = {
        key: {
            m: v["median"] if isinstance(v, dict) and "median" in v else v for m, v in row.items()
        }
        for key, row in django()["rows"].items()
    }
    pg, ddcp, none, zero = rows["pgpool"], rows["ddcp"], rows["max_age_none"], rows["max_age_0"]
    settings = django()["settings"]
    threads = settings["threads"]  # each almost always inside a request: W = threads / λ
    for quoted in (
        f"({pg['rps']:,.0f} requests/s against {none['rps']:,.0f})",
        f"which serves {100 * zero['rps'] / pg['rps']:.0f} % as many ({zero['rps']:,.0f})",
        f"{pg['rps']:,.0f} requests/s against {ddcp['rps']:,.0f}, {pg['rps'] / ddcp['rps']:.2f}x:",
        f"({ddcp['p50_ms']:.0f} and {ddcp['p99_ms']:.0f} ms against pgpool's {pg['p50_ms']:.0f}"
        f" and {pg['p99_ms']:.0f})",
        f"{threads} threads at {ddcp['rps']:,.0f} requests per second allow:"
        f" {threads / ddcp['rps'] * 1e3:.0f} ms, more than its p99",
        f"({threads} threads at {pg['rps']:,.0f} requests per second:"
        f" {threads / pg['rps'] * 1e3:.0f} ms each)",
        f"while {threads} threads want {settings['max_size']}:",
        f"(at most `max_size`, {settings['restart_max_size']} here)",
    ):
        assert quoted in page, f"docs/django.md should say, from {RESULTS.name}: {quoted}"
    assert pg["rps"] >= ddcp["rps"], "the page says the goal (at least as many) is met"
    assert ddcp["p99_ms"] < threads / ddcp["rps"] * 1e3, "the page says its p99 is below the mean"
