"""`genforge report`: one self-contained HTML page that compares run directories.

:func:`build_report` reads each run folder (never its weights, so it takes seconds) and
returns one HTML document holding, side by side:

- the held-out metrics of each run's ``eval.json``, grouped as `genforge eval` prints them
  (:func:`genforge.report.group_of`, :func:`genforge.report.format_value`); a run that was never
  evaluated still gets its column, saying how to evaluate it;
- the loss and metric curves of `genforge plot` (:func:`genforge.plot.figures`), as inline PNGs;
- each run's newest sample grid from ``RUN/samples`` (text and SMILES previews as ``<pre>``),
  and its newest nearest-training-neighbour grid (``*-nearest.png``) when one exists;
- the config keys whose values differ between the runs (``config.json``, flattened);
- for music runs, their music metrics beside real Bach's, piano rolls of their newest MIDI
  samples and an audio player (:mod:`genforge.report_music`).

Self-contained means it opens from disk with no server and no network: CSS inline, images as
``data:`` URLs, no script, no link to anything outside the file. Every string that comes from a
run (names, config values, sample text) is escaped with :func:`html.escape`.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

from genforge import GenforgeError, __version__
from genforge.card import card_section
from genforge.report import GROUPS, format_value, group_of
from genforge.report_music import music_section

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Companion files `genforge sample` writes beside a grid: not the grid itself.
COMPANIONS = ("-nearest.png", "-trajectory.png")
TEXT_PREVIEWS = (".txt", ".smi")
MAX_PREVIEW_CHARS = 4000  # a text preview is a glance, not the whole sample file
MISSING = "\u2014"  # an em dash where a run lacks a key

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
h1 { font-size: 1.5em; } h2 { margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.group th { background: #f3f3f3; }
.note { color: #a33; }
.runs { display: flex; flex-wrap: wrap; gap: 1.5em; }
.run { max-width: 100%; }
img { max-width: 100%; image-rendering: pixelated; border: 1px solid #eee; }
pre { background: #f7f7f7; padding: 0.5em; max-width: 60em; white-space: pre-wrap; }
"""


@dataclass
class RunView:
    """What the report shows of one run folder."""

    path: Path
    name: str
    config: dict[str, str]  # flattened config.json: "train.max_steps" -> "4"
    eval: dict[str, Any] | None  # eval.json, None when the run was never evaluated
    series: tuple[dict, dict] | None  # (training, validation) series of metrics.jsonl
    series_note: str  # why there are no curves, when series is None
    sample: Path | None  # newest sample grid (.png) or text preview (.txt/.smi)
    nearest: Path | None  # newest *-nearest.png


def flatten(value: Any, prefix: str = "") -> dict[str, str]:
    """A nested config as {"dotted.key": JSON text of the value}; lists stay one value."""
    if isinstance(value, dict) and value:
        out: dict[str, str] = {}
        for key, sub in value.items():
            out.update(flatten(sub, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: json.dumps(value, sort_keys=True)}


def config_differences(configs: list[dict[str, str]]) -> dict[str, list[str | None]]:
    """{key: [value in each run, None where absent]} for the keys whose values are not all equal."""
    keys: list[str] = []
    for config in configs:
        keys += [k for k in config if k not in keys]
    rows = {key: [c.get(key) for c in configs] for key in keys}
    return {key: values for key, values in rows.items() if len(set(values)) > 1}


def _newest(paths: list[Path]) -> Path | None:
    # mtime first; the name breaks ties (step_0000004 after step_0000002 in the same instant)
    return max(paths, key=lambda p: (p.stat().st_mtime_ns, p.name), default=None)


def latest_sample(folder: Path) -> tuple[Path | None, Path | None]:
    """(newest sample grid or text preview, newest nearest-neighbour grid) in ``RUN/samples``."""
    if not folder.is_dir():
        return None, None
    files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
    grids = [p for p in files if p.suffix.lower() == ".png" and not p.name.lower().endswith(COMPANIONS)]
    texts = [p for p in files if p.suffix.lower() in TEXT_PREVIEWS]
    nearest = [p for p in files if p.name.lower().endswith("-nearest.png")]
    return _newest(grids) or _newest(texts), _newest(nearest)


def _read_json(path: Path, what: str, fix: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise GenforgeError(f"cannot read {path} ({getattr(e, 'strerror', None) or e}); {fix}") from None
    if not isinstance(data, dict):
        raise GenforgeError(f"{path} is not a JSON object ({what}); {fix}")
    return data


def read_run(run_dir: Path, name: str) -> RunView:
    """The parts of ``run_dir`` the report shows; a missing or broken run is a GenforgeError."""
    from genforge.plot import read_metrics

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise GenforgeError(f"'{run_dir}' is not a run directory (no such folder)")
    if not (run_dir / "config.json").is_file():
        raise GenforgeError(f"'{run_dir}' is not a genforge run (no config.json); name folders "
                            "written by `genforge train`")
    config = _read_json(run_dir / "config.json", "a run config",
                        "the run folder is damaged: resume or retrain it")
    result = None
    if (run_dir / "eval.json").exists():
        result = _read_json(run_dir / "eval.json", "an evaluation",
                            f"run `genforge eval {run_dir}` again to rewrite it")
    series, note = None, ""
    try:
        series = read_metrics(run_dir)
    except GenforgeError as e:  # no metrics.jsonl yet, or no logged step: no curves, the rest stands
        note = str(e)
    sample, nearest = latest_sample(run_dir / "samples")
    return RunView(run_dir, name, flatten(config), result, series, note, sample, nearest)


def _names(run_dirs: list[Path]) -> list[str]:
    """Folder names, or the paths as given where two runs share a folder name."""
    names = [p.resolve().name or str(p) for p in run_dirs]
    return [str(p) if names.count(n) > 1 else n for p, n in zip(run_dirs, names, strict=True)]


def _png_img(data: bytes, alt: str) -> str:
    if not data.startswith(PNG_MAGIC):
        return f'<p class="note">{escape(alt)}: not a PNG file</p>'
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode("ascii")}">'


def _file_png(path: Path, alt: str) -> str:
    try:
        return _png_img(path.read_bytes(), alt)
    except OSError as e:
        return f'<p class="note">cannot read {escape(str(path))} ({escape(e.strerror or str(e))})</p>'


def _metrics_section(runs: list[RunView]) -> list[str]:
    out = ["<h2>Held-out metrics</h2>"]
    out += [f'<p class="note">{escape(r.name)}: not evaluated: run genforge eval {escape(str(r.path))}</p>'
            for r in runs if r.eval is None]
    keys: list[str] = []  # every key any run reported, in the order first seen
    for r in runs:
        keys += [k for k in r.eval or {} if k not in keys]
    if not keys:
        return out
    out += ["<table>", "<tr><th>metric</th>", *[f"<th>{escape(r.name)}</th>" for r in runs], "</tr>"]
    for heading in GROUPS:  # the headings and order of `genforge eval`'s printout
        in_group = [k for k in keys if group_of(k) == heading]
        if in_group:
            out.append(f'<tr class="group"><th colspan="{len(runs) + 1}">{escape(heading)}</th></tr>')
        for key in in_group:
            cells = "".join(
                f'<td class="num">{escape(format_value(key, r.eval[key]))}</td>'
                if r.eval is not None and key in r.eval else f'<td class="num">{MISSING}</td>' for r in runs)
            out.append(f"<tr><td>{escape(key)}</td>{cells}</tr>")
    return [*out, "</table>"]


def _curves_section(runs: list[RunView]) -> list[str]:
    from genforge.plot import _matplotlib, figure_png, figures

    out = ["<h2>Loss and metric curves</h2>"]
    out += [f'<p class="note">{escape(r.name)}: no curves ({escape(r.series_note)})</p>'
            for r in runs if r.series is None]
    logged = [(r.name, *r.series) for r in runs if r.series is not None]
    if not logged:
        return out
    try:
        _matplotlib()
    except GenforgeError as e:  # a text-only install: the rest of the report stands
        return [*out, f'<p class="note">{escape(str(e))}</p>']
    for name, fig in figures(logged).items():
        out.append(f"<div>{_png_img(figure_png(fig), name.removesuffix('.png') + ' curves')}</div>")
    return out


def _samples_section(runs: list[RunView]) -> list[str]:
    out = ["<h2>Samples</h2>", '<div class="runs">']
    from genforge.report_music import is_music_run

    for r in runs:
        out.append(f'<div class="run"><h3>{escape(r.name)}</h3>')
        if r.sample is None and is_music_run(r.path):
            out.append("<p>music: piano rolls and audio are in the Music section</p>")
        elif r.sample is None:
            out.append('<p class="note">no samples yet (RUN/samples is empty)</p>')
        else:
            out.append(f"<p>{escape(r.sample.name)}</p>")
            if r.sample.suffix.lower() == ".png":
                out.append(_file_png(r.sample, f"{r.name} samples"))
            else:
                try:
                    text = r.sample.read_text(errors="replace")
                except OSError as e:
                    text = f"cannot read {r.sample} ({e.strerror or e})"
                cut = text[:MAX_PREVIEW_CHARS] + ("\n..." if len(text) > MAX_PREVIEW_CHARS else "")
                out.append(f"<pre>{escape(cut)}</pre>")
        if r.nearest is not None:
            out.append(f"<p>nearest training images: {escape(r.nearest.name)}</p>")
            out.append(_file_png(r.nearest, f"{r.name} nearest training images"))
        out.append("</div>")
    out.append("</div>")
    return out


def _config_section(runs: list[RunView]) -> list[str]:
    out = ["<h2>Config differences</h2>"]
    if len(runs) < 2:
        return [*out, "<p>one run: nothing to compare</p>"]
    diff = config_differences([r.config for r in runs])
    if not diff:
        return [*out, "<p>the runs share every config value</p>"]
    out += ["<table>", "<tr><th>key</th>", *[f"<th>{escape(r.name)}</th>" for r in runs], "</tr>"]
    for key, values in diff.items():
        cells = "".join(f"<td>{escape(_unquote(v))}</td>" for v in values)
        out.append(f"<tr><td>{escape(key)}</td>{cells}</tr>")
    return [*out, "</table>"]


def _summary(runs: list[RunView]) -> list[str]:
    out = ["<table>", "<tr><th>run</th><th>folder</th><th>family</th><th>data</th><th>evaluated checkpoint</th></tr>"]
    for r in runs:
        checkpoint = (r.eval or {}).get("checkpoint", MISSING if r.eval is not None else "not evaluated")
        cells = [r.name, str(r.path), _unquote(r.config.get("family")), _unquote(r.config.get("data.name")),
                 str(checkpoint)]
        out.append("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in cells) + "</tr>")
    return [*out, "</table>"]


def _unquote(value: str | None) -> str:
    """A flattened config value for reading: strings without their JSON quotes."""
    if value is None:
        return MISSING
    loaded = json.loads(value)
    return loaded if isinstance(loaded, str) else value


def build_report(run_dirs: list[str | Path]) -> str:
    """One self-contained HTML document comparing ``run_dirs`` (see the module docstring).

    Raises a one-line GenforgeError for a missing folder, a folder that is not a run, or a
    damaged config.json/eval.json, before anything is drawn."""
    if not run_dirs:
        raise GenforgeError("name at least one run directory to report on")
    paths = [Path(r) for r in run_dirs]
    runs = [read_run(p, n) for p, n in zip(paths, _names(paths), strict=True)]
    title = "genforge report: " + ", ".join(r.name for r in runs)
    body = [f"<h1>{escape(title)}</h1>", f"<p>genforge {escape(__version__)}</p>", *_summary(runs),
            *_metrics_section(runs), *_curves_section(runs), *_samples_section(runs), *music_section(runs),
            *_config_section(runs),
            *card_section([(r.name, r.path) for r in runs])]
    return "\n".join(["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
                      f"<title>{escape(title)}</title>", f"<style>{CSS}</style>", "</head>", "<body>",
                      *body, "</body>", "</html>", ""])

