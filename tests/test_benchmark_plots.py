"""``--plot`` of benchmarks/overhead.py and benchmarks/chaos.py: bad paths and a missing
matplotlib are refused before a run starts, and the plots draw from the runs' figures.

matplotlib is the optional ``benchmark`` extra: the drawing tests skip without it.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import pytest

PLOTS = Path(__file__).resolve().parents[1] / "benchmarks" / "plots.py"
# Loaded from its file: benchmarks/ on sys.path would let its modules shadow others.
_spec = importlib.util.spec_from_file_location("benchmark_plots", PLOTS)
assert _spec is not None and _spec.loader is not None
plots = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = plots  # dataclasses look their module up there
_spec.loader.exec_module(plots)

PNG = b"\x89PNG\r\n\x1a\n"


def refused(value: str) -> str:
    parser = argparse.ArgumentParser(prog="bench")
    with pytest.raises(SystemExit):
        plots.plot_path(parser, value)
    return value


@pytest.mark.parametrize("name", ["plot.jpg", "plot", "plot.png.txt"])
def test_a_path_that_is_not_a_png_is_refused(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    refused(str(tmp_path / name))
    assert "ending in .png" in capsys.readouterr().err


def test_a_missing_folder_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    refused(str(tmp_path / "nowhere" / "plot.png"))
    assert "does not exist" in capsys.readouterr().err


def test_a_missing_matplotlib_is_refused_with_the_extra_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *args: None if name == "matplotlib" else real(name, *args),
    )
    refused(str(tmp_path / "plot.png"))
    assert ".[benchmark]" in capsys.readouterr().err


def test_no_plot_asked_for_needs_nothing() -> None:
    assert plots.plot_path(argparse.ArgumentParser(), None) is None


def overhead_figures() -> tuple[dict[str, dict[str, float]], dict[str, list[str]]]:
    rps = {"bare": 500.0, "two-phase": 220.0, "single": 250.0, "non-atomic": 225.0}
    rps |= {"replay": 360.0, "floor replay": 700.0}
    rps |= {f"floor {mode}": value * 1.05 for mode, value in list(rps.items())[1:4]}
    results = {
        name: {"rps": value, "p50": 1000 / value, "p99": 3000 / value}
        for name, value in rps.items()
    }
    sql = {"bare": 1, "two-phase": 4, "single": 3, "non-atomic": 3, "replay": 2}
    sql |= {"floor two-phase": 3, "floor single": 3, "floor non-atomic": 3, "floor replay": 1}
    return results, {name: ["SELECT"] * count for name, count in sql.items()}


def test_the_overhead_plot_is_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    results, statements = overhead_figures()
    path = tmp_path / "overhead.png"
    plots.overhead(results, statements, {"two-phase": 0.6}, 0.9, "a caption", path)
    assert path.read_bytes().startswith(PNG)


def test_the_chaos_plot_is_a_png_for_one_database_or_several(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    events = [(0.1, "requests"), (0.2, "first answers"), (1.5, "409s"), (2.5, "503s")]
    events += [(3.0, "replays"), (3.1, "client timeouts"), (3.2, "connection errors")]
    totals = {"intents": 2, "requests": 7, "duplicates": 0, "lost": 0, "mismatched": 1}
    run = plots.ChaosRun("postgres", 3.4, events, [(1.0, "idle"), (2.0, "busy")], totals)
    for runs in ([run], [run, plots.ChaosRun("mariadb", 0.0, [], [], {"lost": 0})]):
        path = tmp_path / f"chaos-{len(runs)}.png"
        plots.chaos(runs, "a caption", path)
        assert path.read_bytes().startswith(PNG)
