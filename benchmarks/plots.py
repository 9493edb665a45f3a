"""PNG plots of the overhead benchmark's and the chaos suite's figures (``--plot PATH``).

A reader takes in "every mode stays near its floor" or "kills all through the run, no
duplicate" at a glance, where the printed tables need reading. matplotlib is the
``benchmark`` extra (``pip install -e ".[benchmark]"``); nothing else imports this
module, so the tests and the runs without ``--plot`` never need it.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MISSING = (
    "--plot needs matplotlib, the benchmark extra: "
    'pip install -e ".[benchmark]" (or pip install matplotlib)'
)
LABELS = {
    "two-phase": "two-phase",
    "single": "single_transaction",
    "non-atomic": "atomic=False",
    "replay": "replay",
}


def plot_path(parser: argparse.ArgumentParser, value: str | None) -> Path | None:
    """Check ``--plot`` before the run starts, so a long run never ends in an error."""
    if value is None:
        return None
    path = Path(value)
    if path.suffix.lower() != ".png":
        parser.error(f"--plot {value}: the plot is a PNG, give a path ending in .png")
    if not path.parent.resolve().is_dir():
        parser.error(f"--plot {value}: the folder {path.parent} does not exist")
    if importlib.util.find_spec("matplotlib") is None:
        parser.error(MISSING)
    return path


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot

    return pyplot


def overhead(
    results: dict[str, dict[str, float]],
    statements: dict[str, list[str]],
    targets: dict[str, float],
    floor_target: float,
    caption: str,
    path: Path,
) -> None:
    """Requests/s of each mode and its floor as a share of the bare view, and p50 latency."""
    pyplot = _pyplot()
    modes = [mode for mode in LABELS if mode in results and f"floor {mode}" in results]
    bare = results["bare"]
    figure, (throughput, latency) = pyplot.subplots(
        1, 2, figsize=(11, 4.6), gridspec_kw={"width_ratios": [3, 2]}
    )
    positions = range(len(modes))
    width = 0.38
    guarded = [results[mode]["rps"] / bare["rps"] for mode in modes]
    floors = [results[f"floor {mode}"]["rps"] / bare["rps"] for mode in modes]
    throughput.bar(
        [p - width / 2 for p in positions], guarded, width, label="the mode", color="#3f51b5"
    )
    throughput.bar(
        [p + width / 2 for p in positions],
        floors,
        width,
        label="its floor: the fewest statements",
        color="#b0b8e0",
    )
    top = max([*guarded, *floors, *targets.values(), 1.0])
    for position, mode, value, floor in zip(positions, modes, guarded, floors, strict=True):
        target = targets.get(mode)
        if target is not None:
            throughput.hlines(
                target, position - 0.45, position + 0.45, colors="#e65100", linestyles="--"
            )
        throughput.annotate(
            f"{value:.2f} of bare\n{value / floor:.2f} of floor",
            (position, max(value, floor, target or 0) + top * 0.02),
            ha="center",
            va="bottom",
            fontsize=9,
        )
    throughput.plot([], [], color="#e65100", linestyle="--", label="target, share of bare")
    throughput.axhline(1.0, color="grey", linewidth=0.8)
    throughput.set_xticks(list(positions), [LABELS[mode] for mode in modes])
    throughput.set_ylabel("requests/s, share of the bare view")
    throughput.set_ylim(0, top * 1.3)
    throughput.set_title(f"throughput (bare view: {bare['rps']:.0f} req/s)", fontsize=10)
    throughput.legend(fontsize=9, loc="upper left")

    names = ["bare", *modes]
    p50 = [results[name]["p50"] for name in names]
    colors = ["grey", *["#3f51b5"] * len(modes)]
    lat_bars = latency.bar(range(len(names)), p50, color=colors)
    for bar, name in zip(lat_bars, names, strict=True):
        added = len(statements[name]) - len(statements["bare"])
        latency.annotate(
            f"{bar.get_height():.1f} ms\n"
            + (f"{added:+d} SQL" if name != "bare" else f"{len(statements[name])} SQL"),
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=9,
        )
    latency.set_xticks(
        range(len(names)), [LABELS.get(name, name) for name in names], rotation=20, ha="right"
    )
    latency.tick_params(axis="x", labelsize=8)
    latency.set_ylabel("p50 latency, ms")
    latency.set_ylim(0, max(p50) * 1.3)
    latency.set_title("median latency, and statements added to the bare view", fontsize=10)
    figure.suptitle(
        f"django-idempotency: what the guard costs (target: each mode >= {floor_target} "
        "of its floor)",
        fontsize=12,
    )
    figure.text(0.5, 0.01, caption, ha="center", fontsize=9, color="dimgrey")
    figure.tight_layout(rect=(0, 0.04, 1, 0.95))
    figure.savefig(path, dpi=120)
    pyplot.close(figure)


@dataclass
class ChaosRun:
    """What one database's chaos run leaves to plot."""

    kind: str
    seconds: float
    events: list[tuple[float, str]]  # (seconds since start, what the client got)
    kills: list[tuple[float, str]]  # (seconds since start, the worker's phase)
    totals: dict[str, int] = field(default_factory=dict)


EVENT_COLORS = {
    "first answers": "#3f51b5",
    "replays": "#7986cb",
    "409s": "#ffb300",
    "5xx": "#d32f2f",
    "client timeouts": "#8d6e63",
    "connection errors": "#9e9e9e",
}
MUST_BE_ZERO = ("duplicates", "lost", "mismatched", "never answered")
IDLE = ("idle", "starting")


def _bin_width(seconds: float) -> float:
    """About 40 bars over the run, each a round number of seconds."""
    for width in (0.25, 0.5, 1, 2, 5, 10, 30):
        if seconds / width <= 40:
            return width
    return 60


def chaos(runs: list[ChaosRun], caption: str, path: Path) -> None:
    """Per database: what the clients got, second by second, with every SIGKILL marked;
    beside it the run's totals, the three that must be zero in red or green."""
    pyplot = _pyplot()
    figure, axes = pyplot.subplots(
        len(runs),
        2,
        figsize=(10, 3.7 * len(runs)),
        gridspec_kw={"width_ratios": [5, 2]},
        squeeze=False,
    )
    for (timeline, totals), run in zip(axes, runs, strict=True):
        step = _bin_width(run.seconds)
        bins = max(math.ceil(run.seconds / step), 1)
        per_bin: dict[str, list[float]] = {name: [0.0] * bins for name in EVENT_COLORS}
        for at, name in run.events:
            kind = "5xx" if name[0] == "5" else name
            if kind in per_bin:
                per_bin[kind][min(int(at / step), bins - 1)] += 1 / step
        starts = [number * step for number in range(bins)]
        bottom = [0.0] * bins
        for name, color in EVENT_COLORS.items():
            rates = per_bin[name]
            timeline.bar(starts, rates, step, bottom=bottom, color=color, label=name, align="edge")
            bottom = [b + r for b, r in zip(bottom, rates, strict=True)]
        top = max(bottom) if any(bottom) else 1.0
        aimed = [at for at, phase in run.kills if phase not in IDLE]
        idle = [at for at, phase in run.kills if phase in IDLE]
        timeline.vlines(
            aimed,
            top * 1.04,
            top * 1.18,
            colors="black",
            linewidth=1.4,
            label="SIGKILL, worker mid-request",
        )
        timeline.vlines(
            idle,
            top * 1.04,
            top * 1.18,
            colors="#9e9e9e",
            linewidth=1.4,
            label="SIGKILL, idle worker",
        )
        timeline.set_xlim(0, bins * step)
        timeline.set_ylim(0, top * 1.22)
        timeline.set_xlabel("seconds into the run")
        timeline.set_ylabel("client outcomes per second")
        timeline.set_title(
            f"{run.kind}: {len(run.kills)} workers killed in {run.seconds:.0f} s "
            f"({len(aimed)} mid-request)",
            fontsize=10,
        )

        names = list(run.totals)
        values = [run.totals[name] for name in names]
        colors = [
            ("#2e7d32" if run.totals[name] == 0 else "#d32f2f")
            if name in MUST_BE_ZERO
            else "#3f51b5"
            for name in names
        ]
        positions = range(len(names))
        totals.barh(positions, values, color=colors)
        for position, value, name in zip(positions, values, names, strict=True):
            text = f"{value}" + ("  (must be 0)" if name in MUST_BE_ZERO else "")
            totals.annotate(
                text,
                (value, position),
                xytext=(3, 0),
                textcoords="offset points",
                va="center",
                fontsize=9,
                color=colors[position] if name in MUST_BE_ZERO else "black",
            )
        totals.set_yticks(list(positions), names, fontsize=9)
        totals.invert_yaxis()
        totals.set_xlim(0, max([*values, 1]) * 1.45)
        totals.set_title("totals", fontsize=10)
        totals.tick_params(axis="x", labelsize=8)
    handles, labels = axes[0][0].get_legend_handles_labels()
    figure.legend(
        handles,
        labels,
        loc="lower center",
        ncol=4,
        fontsize=9,
        frameon=False,
        bbox_to_anchor=(0.5, 0.03 / len(runs)),
    )
    figure.suptitle("django-idempotency chaos suite", fontsize=12)
    figure.text(0.5, 0.005, caption, ha="center", fontsize=9, color="dimgrey")
    figure.tight_layout(rect=(0, 0.15 / len(runs), 1, 0.97))
    figure.savefig(path, dpi=120)
    pyplot.close(figure)
