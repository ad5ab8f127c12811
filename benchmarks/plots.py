"""Charts of the results, as PNG and SVG (matplotlib, Agg backend: no display needed).

Bars show the median over repetitions; error bars the interquartile range (p25 - p75).
Each contender keeps the same colour in every chart; pgpool is the strong blue.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot: headless, deterministic, thread-free

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import AutoLocator, FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from benchmarks import fleet, sizing

COLORS = {
    "pgpool-threaded": "#1f5fbf",
    "pgpool-simple": "#6f9fe0",
    "psycopg2-threaded": "#d9534f",
    "psycopg2-simple": "#f0a09e",
    "psycopg2-threaded-3-3": "#a33a36",
    "psycopg2-pool-ts": "#17a2b8",
    "psycopg2-pool": "#8fd3de",
    "psycopg_pool": "#5cb85c",
    "sqlalchemy": "#9b59b6",
    "dbutils": "#f0ad4e",
    "raw-psycopg2": "#555555",
    "raw-psycopg3": "#999999",
    "connect-per-request": "#333333",
    "lock-floor": "#aaaaaa",
}
TIMELINE_SERIES = (
    ("idle", "idle", "#5cb85c"),
    ("in_use", "in use", "#1f5fbf"),
    ("waiting", "waiting", "#d9534f"),
    ("connecting", "connecting", "#f0ad4e"),
)
OPENED = ("opened", "connections opened", "#333333")


def _color(key: str) -> str:
    return COLORS.get(key, "#777777")


def plain(value: float) -> str:
    """A value label without scientific notation: 27,480 / 21.7 / 0.95."""
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _plain_axis(ax: Axes, axis: str = "x") -> None:
    """Plain tick labels (1,000 not 1e3 or 10^3); on a log axis major ticks only, so the
    minor ones cannot crowd into each other."""
    target = ax.xaxis if axis == "x" else ax.yaxis
    if target.get_scale() != "log" and type(target.get_major_locator()) is AutoLocator:
        # At most 5 intervals: "10,000" labels at matplotlib's default density ran into
        # each other on a narrow panel (the contention plot's one-CPU row).
        target.set_major_locator(MaxNLocator(nbins=5, steps=[1, 2, 2.5, 5, 10]))
    if target.get_scale() == "log":
        target.set_major_locator(LogLocator(base=10, numticks=8))
        # Two unlabelled minor ticks per decade (2 and 5): matplotlib's eight cost seconds of
        # layout per figure and read no better.
        target.set_minor_locator(LogLocator(base=10, subs=(2.0, 5.0), numticks=8))
        target.set_minor_formatter(NullFormatter())
    target.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:,g}"))


def _over_label(row: dict[str, Any]) -> str:
    """The line added under a contender's name when it exceeded maxconn."""
    info = row.get("sessions") or {}
    if not info.get("over"):
        return ""
    return f"\n({info['peak']} sessions > max {info['maxconn']})"


def _bars(
    ax: Axes,
    rows: dict[str, Any],
    labels: dict[str, str],
    metric: str,
    *,
    scale: float = 1.0,
    xlabel: str = "",
    title: str = "",
    log: bool = False,
    integer: bool = False,
) -> None:
    """Horizontal bars of `metric` (a Summary dict per row) with p25-p75 error bars.

    The value label sits past the end of the error bar, never on it; a contender that
    exceeded maxconn gets a hatched bar and says so under its name.
    """
    keys = list(rows)
    med = [rows[k][metric]["median"] * scale for k in keys]
    p75 = [rows[k][metric]["p75"] * scale for k in keys]
    low = [max(0.0, m - rows[k][metric]["p25"] * scale) for k, m in zip(keys, med, strict=True)]
    high = [max(0.0, top - m) for top, m in zip(p75, med, strict=True)]
    y = list(range(len(keys)))
    bars = ax.barh(
        y,
        med,
        xerr=[low, high],
        color=[_color(k) for k in keys],
        capsize=3,
        error_kw={"elinewidth": 1, "ecolor": "#222222"},
    )
    for bar, key in zip(bars, keys, strict=True):
        if _over_label(rows[key]):
            bar.set_hatch("//")
            bar.set_edgecolor("#333333")
    ax.set_yticks(y, [labels.get(k, k) + _over_label(rows[k]) for k in keys])
    ax.invert_yaxis()  # first row on top, like the tables
    if log:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    ends = [max(m, top) for m, top in zip(med, p75, strict=True)]
    for yi, m, end in zip(y, med, ends, strict=True):
        ax.annotate(
            f"{m:,.0f}" if integer else plain(m),
            (end, yi),
            va="center",
            fontsize=7,
            xytext=(4, 0),
            textcoords="offset points",
        )
    # Room on the right for the labels past the longest bar.
    right = max(ends, default=1.0) or 1.0
    if log:
        lowest = min((m for m in med if m > 0), default=right)
        ax.set_xlim(left=lowest / 2, right=right * 4)
    else:
        ax.set_xlim(left=0, right=right * 1.18)
    if integer:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _plain_axis(ax)


def _timelines(
    fig: Figure, timelines: dict[str, Any], labels: dict[str, str], title: str, *, sharex: bool
) -> None:
    """One panel per pool: gauges on the left axis, connections opened on the right one."""
    keys = list(timelines)
    axes = fig.subplots(len(keys), 1, sharex=sharex, squeeze=False)[:, 0]
    for ax, key in zip(axes, keys, strict=True):
        tl = timelines[key]
        t_ms = [t * 1e3 for t in tl["t"]]
        handles = []
        for field, name, color in TIMELINE_SERIES:
            if field == "connecting" and not any(tl.get(field, ())):
                continue  # only pgpool reports connects in flight; skip an all-zero line
            handles += ax.step(t_ms, tl[field], where="post", label=name, color=color, lw=1.2)
        # Opened connections can dwarf the gauges (psycopg2 reconnects hundreds of times):
        # they get their own axis on the right.
        right = ax.twinx()
        field, name, color = OPENED
        handles += right.step(
            t_ms,
            tl[field],
            where="post",
            label=f"{name} (right axis)",
            color=color,
            lw=1.4,
            linestyle="--",
        )
        right.set_ylim(bottom=0, top=max(1, max(tl[field], default=0)) * 1.1)
        right.set_ylabel("opened")
        ax.set_ylim(bottom=0)
        for axis in (ax.yaxis, right.yaxis):  # counts of connections: whole numbers
            axis.set_major_locator(MaxNLocator(integer=True))
        for mark in tl["marks"]:
            ax.axvline(mark["t"] * 1e3, color="#888888", linestyle=":", linewidth=0.8)
            ax.annotate(
                mark["label"],
                (mark["t"] * 1e3, 1.0),
                xycoords=("data", "axes fraction"),
                fontsize=7,
                va="top",
                rotation=90,
                xytext=(2, -2),
                textcoords="offset points",
            )
        ax.set_title(labels.get(key, key), fontsize=10)
        ax.set_ylabel("connections / threads")
        ax.set_xlabel("time (ms)")
        ax.grid(alpha=0.3)
        ax.legend(handles=handles, fontsize=7, loc="center right")
    fig.suptitle(title)


# -- one function per scenario: (figure name, figure) pairs ---------------------------


def _cycle(res: dict[str, Any]) -> list[tuple[str, Figure]]:
    fig = plt.figure(figsize=(12, 5), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    variants = res["variants"]
    _bars(
        ax1,
        variants["noop"]["rows"],
        res["labels"],
        "us",
        xlabel="us per cycle",
        title="checkout + return, no query",
    )
    _bars(
        ax2,
        variants["select1"]["rows"],
        res["labels"],
        "us",
        xlabel="us per cycle",
        title="checkout + SELECT 1 + return",
    )
    fig.suptitle("cycle: one thread (lower is better)")
    return [("cycle", fig)]


def _contention(res: dict[str, Any]) -> list[tuple[str, Figure]]:
    labels = res["labels"]
    variants = res["variants"]
    titles = {
        "select1": "SELECT 1",
        "sleep2ms": "2 ms server work",
        "select1_one_cpu": "SELECT 1, one CPU",
    }
    fig = plt.figure(figsize=(12, 4 * len(variants)), layout="constrained")
    grid = fig.subplots(len(variants), 2, squeeze=False)
    for (variant, data), (ax1, ax2) in zip(variants.items(), grid, strict=True):
        _bars(
            ax1,
            data["rows"],
            labels,
            "qps",
            xlabel="queries / s (higher is better)",
            title=f"{titles[variant]}: throughput",
        )
        _bars(
            ax2,
            data["rows"],
            labels,
            "wait_max_ms",
            xlabel="ms (lower is better, log)",
            title=f"{titles[variant]}: worst checkout wait",
            log=True,
        )
    st = res["settings"]
    fig.suptitle(f"contention: {st['threads']} threads, {st['connections']} connections")
    # Top row: the CDF (where most checkouts are). Bottom row: the same data as the share
    # of checkouts that waited at least x, on a log scale, where the tail (starvation) shows.
    cdf = plt.figure(figsize=(5.5 * len(variants), 8), layout="constrained")
    grid = cdf.subplots(2, len(variants), squeeze=False)
    for col, (variant, data) in enumerate(variants.items()):
        top, bottom = grid[0][col], grid[1][col]
        for key, row in data["rows"].items():
            points = row["wait_cdf_ms"]
            xs = [max(x, 1e-3) for x in points["x"]]  # log axis: no zeros
            n = points.get("n") or len(xs)
            at_least = [1.0 - y + 1.0 / n for y in points["y"]]  # P(wait >= x)
            over = row.get("sessions", {}).get("over")
            label = labels.get(key, key) + (" (over maxconn)" if over else "")
            style = {"label": label, "color": _color(key), "linewidth": 1.5}
            top.step(xs, points["y"], where="post", **style)
            bottom.step(xs, at_least, where="post", **style)
        for ax in (top, bottom):
            ax.set_xscale("log")
            ax.set_xlabel("checkout wait (ms, log)")
            ax.grid(alpha=0.3)
            _plain_axis(ax)
        top.set_title(titles[variant], fontsize=10)
        top.set_ylabel("fraction of checkouts (CDF)")
        bottom.set_yscale("log")
        bottom.set_ylabel("fraction waiting at least x (log)")
        _plain_axis(bottom, "y")
    # One legend for all panels, below them: inside a panel it covered the curves.
    handles, names = grid[0][0].get_legend_handles_labels()
    cdf.legend(handles, names, loc="outside lower center", ncols=min(6, len(names)), fontsize=8)
    cdf.suptitle(
        "contention: checkout waits. Top: most checkouts (left is better); "
        "bottom: the tail (a line reaching far right = a thread starved)"
    )
    return [("contention", fig), ("contention_wait_cdf", cdf)]


def _churn(res: dict[str, Any]) -> list[tuple[str, Figure]]:
    labels = res["labels"]
    fig = plt.figure(figsize=(12, 4.5), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    _bars(
        ax1, res["rows"], labels, "qps", xlabel="queries / s (higher is better)", title="throughput"
    )
    _bars(
        ax2,
        res["rows"],
        labels,
        "reconnects_per_1k",
        xlabel="per 1000 requests",
        title="connections opened during steady load",
    )
    fig.suptitle("churn: pool (1, 3), 3 threads, 0.2 ms think time")
    out = [("churn", fig)]
    if res["timelines"]:
        tl = plt.figure(figsize=(12, 3 * len(res["timelines"]) + 1), layout="constrained")
        _timelines(tl, res["timelines"], labels, "churn: pool state over time", sharex=True)
        out.append(("churn_timeline", tl))
    return out


def _spike(res: dict[str, Any]) -> list[tuple[str, Figure]]:
    if "skipped" in res:
        return []
    labels = res["labels"]
    fig = plt.figure(figsize=(12, 4.5), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    _bars(
        ax1,
        res["rows"],
        labels,
        "served_s",
        scale=1e3,
        log=True,
        xlabel="ms until all 50 served (lower is better, log)",
        title="time to serve the spike",
    )
    _bars(
        ax2,
        res["rows"],
        labels,
        "opened_after_settle",
        xlabel="connections (lower is better)",
        title="connections opened",
        integer=True,
    )
    st = res["settings"]
    fig.suptitle(
        f"spike: {st['threads']} threads at once, pool ({st['minconn']}, {st['maxconn']}), "
        f"{st['connect_delay_s'] * 1e3:g} ms connects"
    )
    out = [("spike", fig)]
    if res["timelines"]:
        tl = plt.figure(figsize=(12, 2.6 * len(res["timelines"]) + 1), layout="constrained")
        _timelines(
            tl,
            res["timelines"],
            labels,
            "spike: pool state over time (each panel has its own time scale)",
            sharex=False,
        )
        out.append(("spike_timeline", tl))
    return out


def _scale(res: dict[str, Any]) -> list[tuple[str, Figure]]:
    labels = res["labels"]
    fig = plt.figure(figsize=(15, 4.5), layout="constrained")
    axes = fig.subplots(1, 3)
    panels = [
        (res["maxconn"]["idle"], "maxconn (all idle)", "maxconn"),
        (res["maxconn"]["held"], "maxconn (all but one checked out)", "maxconn"),
        (res["threads"], "threads (pool (T, T))", "threads"),
    ]
    for ax, (data, title, xlabel) in zip(axes, panels, strict=True):
        for key, row in data.items():
            xs = [int(x) for x in row["ns"]]
            med = [row["ns"][x]["median"] / 1e3 for x in row["ns"]]
            low = [m - row["ns"][x]["p25"] / 1e3 for m, x in zip(med, row["ns"], strict=True)]
            high = [row["ns"][x]["p75"] / 1e3 - m for m, x in zip(med, row["ns"], strict=True)]
            ax.errorbar(
                xs,
                med,
                yerr=[[max(0, v) for v in low], [max(0, v) for v in high]],
                label=labels.get(key, key),
                color=_color(key),
                marker="o",
                markersize=3,
                capsize=2,
            )
        ax.set_xscale("log")
        points = [int(x) for x in next(iter(data.values()))["ns"]] if data else []
        ax.set_xticks(points, [str(x) for x in points])  # the sizes measured, plainly
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_ylim(bottom=0)
        ax.set_xlabel(f"{xlabel} (log)")
        ax.set_ylabel("us per checkout + return")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("scale: pool cost with stub connections (flat is the goal)")
    return [("scale", fig)]


def _unpooled(res: dict[str, Any]) -> list[tuple[str, Figure]]:
    fig = plt.figure(figsize=(10, 3.5), layout="constrained")
    ax = fig.subplots()
    _bars(
        ax,
        res["rows"],
        res["labels"],
        "us",
        log=True,
        xlabel="us per SELECT 1 (lower is better, log)",
        title="",
    )
    fig.suptitle("pooled vs unpooled: one thread, SELECT 1")
    return [("unpooled", fig)]


PLOTTERS: dict[str, Callable[[dict[str, Any]], list[tuple[str, Figure]]]] = {
    "cycle": _cycle,
    "contention": _contention,
    "churn": _churn,
    "spike": _spike,
    "scale": _scale,
    "unpooled": _unpooled,
    "fleet": fleet.plot,  # drawn by its own module: it has no contenders
    "sizing": sizing.plots,  # drawn by its own module
}


def write_plots(results: dict[str, Any], folder: Path) -> dict[str, list[str]]:
    """Draw every scenario present in `results` into `folder` as ``NAME.png`` and
    ``NAME.svg``; return the names drawn for each scenario."""
    folder.mkdir(parents=True, exist_ok=True)
    written: dict[str, list[str]] = {}
    for scenario, plotter in PLOTTERS.items():
        result = results.get(scenario)
        if result is None or "error" in result:
            continue
        for name, fig in plotter(result):
            try:
                for ext in ("png", "svg"):
                    fig.savefig(folder / f"{name}.{ext}", dpi=110 if ext == "png" else None)
            finally:
                plt.close(fig)
            written.setdefault(scenario, []).append(name)
    return written
