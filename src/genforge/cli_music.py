"""`genforge metrics music FILES --against jsb|bach`: the music metric table of any pieces
beside the same table of real Bach. argparse -> library -> print, nothing else."""

from __future__ import annotations

import argparse
import math


def add_music_metrics_parser(msub) -> None:
    """Adds `music` to `genforge metrics`' subcommands."""
    from genforge.metrics.music.reference import REFERENCES

    mu = msub.add_parser(
        "music", help="score four-voice pieces made anywhere against real Bach",
        description="Pitch-class and key, note density, melodic intervals, rhythm, SATB range "
                    "violations, parallel fifths and octaves, and memorization (longest run of "
                    "16th steps copied from a training chorale) of four-voice pieces, printed "
                    "beside the same numbers measured on real Bach chorales (the data's floor).")
    mu.add_argument("files", nargs="*", metavar="FILE",
                    help="pieces: .mid/.midi files, .npy arrays (T, 4) or (N, T, 4), or .json lists of "
                         "[soprano, alto, tenor, bass] MIDI pitches per 16th (-1 = rest)")
    mu.add_argument("--against", default="jsb", metavar="REF",
                    help="real Bach to compare with: " + "; ".join(f"'{k}': {v}" for k, v in REFERENCES.items())
                         + " (default jsb)")
    mu.add_argument("--json", metavar="OUT", default=None, help="also write both rows to this JSON file")
    mu.set_defaults(func=_metrics_music)


def _json_row(row: dict) -> dict:
    """NaN (nothing to count) as null: strict JSON."""
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}


def _cell(value: float, key: str = "") -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "-"
    if key.startswith("copy_steps"):  # a count of 16th steps (a median may end in .5)
        return f"{value:g}"
    if value != 0 and abs(value) < 0.01:
        return f"{value:.3g}"  # rates such as Bach's parallel fifths must not read as 0.0000
    return f"{value:.4f}" if abs(value) < 10 else f"{value:.1f}"


def format_table(samples: dict, reference: dict, against: str) -> str:
    """Rows: metric, samples, real Bach; then the meaning of each row."""
    from genforge.metrics.music.table import ROWS

    head = ("metric", "samples", f"real Bach ({against})")
    rows = [(key, _cell(samples[key], key), _cell(reference[key], key)) for key, _ in ROWS if key in samples]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(3)]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
             for r in [head, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    meanings = [f"  {key}: {text}" for key, text in ROWS if key in samples]
    return "\n".join(lines + ["", "rows:", *meanings])


def _metrics_music(args: argparse.Namespace) -> None:
    import json
    from pathlib import Path

    from genforge.atomic import atomic_write_text
    from genforge.metrics.music.grid import read_grid_files
    from genforge.metrics.music.reference import load_reference
    from genforge.outputs import check_out

    if args.json:  # before minutes of scoring: --json must name a new file
        check_out(args.json, "--json")
    grids, labels = read_grid_files(args.files)  # before the reference: a bad file fails fast
    ref = load_reference(args.against)
    samples, reference = ref.score(grids), ref.table()
    print(f"{len(grids)} pieces from {len(args.files)} files against '{args.against}'")
    print(format_table(samples, reference, args.against))
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        result = {"against": args.against, "files": labels, "samples": _json_row(samples),
                  "reference": _json_row(reference)}
        atomic_write_text(out, json.dumps(result, indent=2, allow_nan=False) + "\n")
        print(f"saved to {out}")
