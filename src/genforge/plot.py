"""Training curves as PNG pictures, from the run directories alone (``metrics.jsonl``).

``metrics.jsonl`` holds one JSON row per log: training rows ``{"step": .., "loss": .., ...}``
and evaluation rows with ``"split": "val"``. :func:`plot_runs` writes

- ``loss.png``: training loss (line) and validation loss (dots on a dashed line) vs step,
- ``metrics.png``: one panel per other numeric key that was logged (``grad_norm``, ``lr``,
  throughput, validation terms as ``val/<key>``, ...),

with one colour per run, labelled with the run folder's name, so runs compare by eye.
Files are written atomically (``genforge.atomic``).
matplotlib is used without pyplot (a bare ``Figure`` renders with Agg): no display, no
global state.
"""

from __future__ import annotations

import io
import json
import math
import os
from collections import defaultdict
from pathlib import Path

from genforge import GenforgeError
from genforge.atomic import atomic_write

# Logged, but not worth a curve against the step.
SKIP_KEYS = {"step", "split", "best", "weights", "elapsed_s", "epoch"}
MAX_COLUMNS = 3

Series = dict[str, list[tuple[float, float]]]  # key -> [(step, value)]


def _matplotlib():
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise GenforgeError("plotting needs matplotlib: pip install 'genforge[images]'") from None
    return Figure


def read_metrics(run_dir: Path) -> tuple[Series, Series]:
    """(training series, validation series) of one run: key -> [(step, value)], finite numbers only.

    A line that is not JSON (the last one, cut short by a crash) is skipped.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise GenforgeError(f"'{run_dir}' is not a run directory (no such folder)")
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise GenforgeError(f"'{run_dir}' is not a run directory with logged metrics (no metrics.jsonl)")
    train: Series = defaultdict(list)
    val: Series = defaultdict(list)
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise GenforgeError(f"cannot read {path} ({e})") from None
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(row, dict) or not isinstance(row.get("step"), (int, float)):
            continue
        target = val if row.get("split") == "val" else train
        for key, value in row.items():
            if key in SKIP_KEYS or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if math.isfinite(value):
                target[key].append((float(row["step"]), float(value)))
    if not train and not val:
        raise GenforgeError(f"{path} has no logged steps yet")
    return dict(train), dict(val)


def _save(fig, path: Path) -> Path:
    atomic_write(path, lambda f: fig.savefig(f, format="png"))
    return path


def _draw(ax, points, colour, label, dashed=False):
    xs, ys = zip(*sorted(points), strict=True)
    if dashed:
        ax.plot(xs, ys, "--o", color=colour, label=label, markersize=3, linewidth=1)
    else:
        ax.plot(xs, ys, "-", color=colour, label=label, linewidth=1)


def _log_scale(ax, values: list[float]) -> None:
    if values and min(values) > 0 and max(values) / min(values) > 100:
        ax.set_yscale("log")


def plot_runs(run_dirs: list[Path], out: Path) -> list[Path]:
    """Loss curves and logged metrics of ``run_dirs``, one line per run, as PNGs in ``out``.

    Returns the paths written: ``out/loss.png`` and, when anything else was logged,
    ``out/metrics.png``.
    """
    _matplotlib()
    if not run_dirs:
        raise GenforgeError("name at least one run directory to plot")
    runs = [(Path(r), *read_metrics(Path(r))) for r in run_dirs]
    names = [r.resolve().name or str(r) for r, _, _ in runs]
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise GenforgeError(f"cannot create {out} ({e.strerror or e})") from None
    drawn = figures([(name, train, val) for name, (_, train, val) in zip(names, runs, strict=True)])
    return [_save(fig, out / name) for name, fig in drawn.items()]


def figure_png(fig) -> bytes:
    """One figure as PNG bytes (`genforge report` inlines them)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})  # no URL in the bytes
    return buffer.getvalue()


def figures(runs: list[tuple[str, Series, Series]]) -> dict:
    """{"loss.png": Figure, "metrics.png": Figure (when anything else was logged)} for
    ``runs`` = [(label, training series, validation series)], one colour per run."""
    Figure = _matplotlib()
    names = [name for name, _, _ in runs]
    colours = [f"C{i % 10}" for i in range(len(runs))]
    drawn = {}

    fig = Figure(figsize=(7, 4.5), dpi=100)
    ax = fig.add_subplot()
    values = []
    for (_, train, val), name, colour in zip(runs, names, colours, strict=True):
        if train.get("loss"):
            _draw(ax, train["loss"], colour, f"{name} train")
            values += [v for _, v in train["loss"]]
        if val.get("loss"):
            _draw(ax, val["loss"], colour, f"{name} val", dashed=True)
            values += [v for _, v in val["loss"]]
    _log_scale(ax, values)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("training and validation loss")
    ax.grid(alpha=0.3)
    if values:
        ax.legend(fontsize="small")
    fig.tight_layout()
    drawn["loss.png"] = fig

    keys: list[str] = []  # other metrics, in the order first seen
    for _, train, val in runs:
        for key in train:
            if key != "loss" and key not in keys:
                keys.append(key)
        for key in val:
            if key != "loss" and f"val/{key}" not in keys:
                keys.append(f"val/{key}")
    if keys:
        cols = min(MAX_COLUMNS, len(keys))
        rows = math.ceil(len(keys) / cols)
        fig = Figure(figsize=(4.2 * cols, 3.2 * rows), dpi=100)
        for i, key in enumerate(keys):
            ax = fig.add_subplot(rows, cols, i + 1)
            values = []
            for (_, train, val), name, colour in zip(runs, names, colours, strict=True):
                is_val = key.startswith("val/")
                points = val.get(key[4:]) if is_val else train.get(key)
                if points:
                    _draw(ax, points, colour, name, dashed=is_val)
                    values += [v for _, v in points]
            _log_scale(ax, values)
            ax.set_title(key, fontsize="medium")
            ax.set_xlabel("step", fontsize="small")
            ax.tick_params(labelsize="small")
            ax.grid(alpha=0.3)
            if i == 0:
                ax.legend(fontsize="small")
        fig.tight_layout()
        drawn["metrics.png"] = fig
    return drawn


def plot_run(run_dir: Path) -> list[Path]:
    """:func:`plot_runs` for one run, into ``RUN_DIR/plots/``."""
    return plot_runs([Path(run_dir)], Path(run_dir) / "plots")


def default_out(run_dirs: list[Path]) -> Path:
    """Where `genforge plot` writes without --out: RUN/plots for one run, else ``plots/`` in the
    folder that holds them all (``runs/plots`` for ``runs/a runs/b``)."""
    if len(run_dirs) == 1:
        return Path(run_dirs[0]) / "plots"
    return Path(os.path.commonpath([str(Path(r).resolve().parent) for r in run_dirs])) / "plots"
