"""JSB Chorales, 16th notes: genforge's GPT (preset gpt-jsb, or --preset) for a time budget, note-wise NLL
on validation and test beside the published numbers, plus samples (MIDI, piano-roll PNG, WAV).

A note is one token of the grid serialization: one voice at one 16th step (pitch, hold or rest),
the unit of the note-wise NLL in Huang et al., "Music Transformer" (ICLR 2019), Table 1 (JSB
Chorales, validation NLL per note in nats). The anchors below are that table's rows as recalled
for this script; check them against the paper before quoting the comparison.

Training runs as `genforge train PRESET` and is stopped with SIGINT when the budget is spent
(genforge checkpoints and exits 130); `genforge eval` then scores the best checkpoint.

Usage:
  GENFORGE_DATA=/path/with/jsb-chorales python benchmarks/bench_music.py [--minutes 10]
  The 10-minute CPU recipe (its schedule ends at the steps 10 quiet minutes reach) and the GPU one:
      python benchmarks/bench_music.py --preset gpt-jsb-cpu --out /tmp/bench-music-cpu
      python benchmarks/bench_music.py --preset gpt-jsb-gpu --minutes 8 --out /tmp/bench-music-gpu
  A quick end-to-end check that leaves the committed results alone:
      python benchmarks/bench_music.py --minutes 0.5 --out /tmp/bench-music --samples 1
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PUBLISHED = {  # Huang et al. 2019, Table 1: note-wise validation NLL (nats), JSB Chorales at 16ths
    "Coconet (Huang et al. 2017)": 0.436,
    "Transformer baseline (Vaswani et al. 2017)": 0.417,
    "Music Transformer (relative attention)": 0.357,
}


def genforge(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "genforge", *args], check=True, text=True,
                          capture_output=True, **kw)


def train(run: Path, preset: str, minutes: float, overrides: list[str]) -> float:
    cmd = [sys.executable, "-m", "genforge", "train", preset, "--run-dir", str(run), "--overwrite", "--no-progress",
           *overrides]  # the preset's own schedule; the budget stops it earlier if it must
    start = time.monotonic()
    proc = subprocess.Popen(cmd)
    try:
        proc.wait(timeout=minutes * 60)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)  # genforge checkpoints and exits 130
        proc.wait()
    if proc.returncode not in (0, 130):
        raise SystemExit(f"training failed with exit code {proc.returncode}")
    return time.monotonic() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="gpt-jsb", help="a GPT preset on JSB grid tokens (default gpt-jsb; "
                    "gpt-jsb-cpu is the 10-minute CPU recipe, gpt-jsb-gpu the GPU one)")
    ap.add_argument("--minutes", type=float, default=10.0, help="training wall-clock budget (default 10)")
    ap.add_argument("--out", default=str(HERE / "results" / "music"), help="results folder")
    ap.add_argument("--samples", type=int, default=3, help="sample pieces written as MIDI and PNG (default 3)")
    ap.add_argument("override", nargs="*", help="extra key.sub=value overrides for the preset")
    args = ap.parse_args()
    if not os.environ.get("GENFORGE_DATA"):
        print("note: GENFORGE_DATA is unset; the JSB file is looked up in the cache or downloaded", file=sys.stderr)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # weights stay out of results/ (runs/ is ignored); each other preset keeps its own run
    run = HERE.parent / "runs" / "bench-music" / ("run" if args.preset == "gpt-jsb" else args.preset)
    seconds = train(run, args.preset, args.minutes, args.override)
    genforge("eval", str(run), "--num-samples", "32")
    report = json.loads((run / "eval.json").read_text())
    files = []
    for i in range(args.samples):
        for suffix in (".mid", ".png"):
            path = out / f"sample-{i + 1}{suffix}"
            path.unlink(missing_ok=True)  # the benchmark's own outputs, rewritten each run
            genforge("sample", str(run), "--out", str(path), "--seed", str(i), "--steps", "128")
            files.append(path.name)
    wav = out / "sample-1.wav"
    wav.unlink(missing_ok=True)
    try:
        genforge("sample", str(run), "--out", str(wav), "--seed", "0", "--steps", "128")
        files.append(wav.name)
    except subprocess.CalledProcessError as e:
        print(f"no WAV: {e.stderr.strip()}", file=sys.stderr)
    rows = [(f"genforge {args.preset} (this run)", report["nll_per_note_val"], report.get("nll_per_note_test"))]
    rows += [(name, val, None) for name, val in PUBLISHED.items()]
    lines = ["| model | val NLL/note | test NLL/note |", "| --- | --- | --- |"]
    lines += [f"| {n} | {v:.3f} | {'' if t is None else f'{t:.3f}'} |" for n, v, t in rows]
    summary = {"preset": args.preset, "train_seconds": round(seconds, 1), "step": report["step"], "eval": report,
               "published": PUBLISHED, "files": files, "command": " ".join(sys.argv)}
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
