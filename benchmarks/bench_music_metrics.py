"""The music metric table of real Bach, the floor every music sample row is read against.

Rows (columns are the metrics of ``genforge.metrics.music.ROWS``):

- ``jsb test`` : the 77 JSB test chorales (Boulanger-Lewandowski et al. 2012 split), distances
  against JSB valid, memorization against JSB train: the reference row of
  `genforge metrics music --against jsb`;
- ``bach odd half``: music21's bundled four-part Bach chorales, odd-numbered half, distances
  and memorization against the even half: the reference row of `--against bach`;
- one row per ``--samples NAME=FILE[,FILE...]``: a model's pieces (.mid, .npy, .json grids)
  measured against JSB test as `genforge metrics music FILES --against jsb` does.

Writes benchmarks/results/music_metrics.json and .md (or --out PREFIX). music21's chorales are
parsed once (minutes) and cached by genforge.data.music; --references jsb skips them.

Usage: GENFORGE_DATA=/work/shared/data python benchmarks/bench_music_metrics.py
       [--references jsb,bach] [--samples gpt=RUN/samples/a.mid,RUN/samples/b.mid] [--out PREFIX]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from genforge.atomic import atomic_write_text
from genforge.metrics.music import ROWS, load_reference, read_grid_files

RESULTS = Path(__file__).parent / "results"


def _cell(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, int):
        return str(v)
    return f"{v:.3g}" if v != 0 and abs(v) < 0.01 else f"{v:.4f}"


def markdown(rows: dict[str, dict]) -> str:
    keys = [k for k, _ in ROWS if any(k in r for r in rows.values())]
    lines = ["| row | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(_cell(r.get(k)) for k in keys) + " |" for name, r in rows.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--references", default="jsb,bach", help="comma-separated: jsb, bach (default both)")
    p.add_argument("--samples", action="append", default=[], metavar="NAME=FILE[,FILE]",
                   help="a row of sample pieces measured against JSB (repeatable)")
    p.add_argument("--out", default=str(RESULTS / "music_metrics"), help="output prefix (.json and .md)")
    args = p.parse_args(argv)

    rows: dict[str, dict] = {}
    seconds: dict[str, float] = {}
    refs = {}
    for name in [r.strip() for r in args.references.split(",") if r.strip()]:
        t = time.perf_counter()
        refs[name] = load_reference(name)
        label = "jsb test" if name == "jsb" else "bach odd half"
        rows[label] = refs[name].table()
        seconds[label] = round(time.perf_counter() - t, 1)
        print(f"{label}: {seconds[label]} s", file=sys.stderr)
    for spec in args.samples:
        name, _, files = spec.partition("=")
        if not files:
            p.error(f"--samples {spec!r}: give NAME=FILE[,FILE...]")
        ref = refs.get("jsb") or refs.setdefault("jsb", load_reference("jsb"))
        grids, _ = read_grid_files(files.split(","))
        rows[name] = ref.score(grids)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    clean = {n: {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in r.items()}
             for n, r in rows.items()}
    atomic_write_text(out.with_suffix(".json"), json.dumps({"rows": clean, "seconds": seconds}, indent=2) + "\n")
    table = markdown(rows)
    atomic_write_text(out.with_suffix(".md"), "# Music metrics: real Bach (the floor) and samples\n\n"
                      + table + "\n\nRows and metrics: benchmarks/bench_music_metrics.py; "
                      "definitions: genforge.metrics.music.\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
