"""RL toward "no parallel fifths" on a gpt-jsb run (issue #19): the rate of parallel fifths and
octaves per voice-pair transition in samples before and after `genforge rl --reward no_parallels`,
beside real Bach's rate on the held-out chorales (the data's floor), with the held-out note-wise
NLL of both models (the cost: how far the policy moved from the data's distribution).

The rate is ``metrics.music.voicing.parallels`` pooled over all pieces: (parallel fifths +
parallel octaves) / voice-pair transitions, the same definition the reward uses per piece
(reward = 1 - rate). The NLL is what `genforge eval` reports (``MusicModality.evaluate``: nats per
grid token, validation and test splits), computed in this process so the base run's folder is
never written to. Samples are drawn at temperature 1 from ``<bos>`` with a fixed seed, the same
seed for both models; the RL model is its last checkpoint.

Usage:
  GENFORGE_DATA=... python benchmarks/bench_rl_music.py BASE_RUN [--steps 200] [--samples 64]
  A quick end-to-end check that leaves the committed results alone:
      python benchmarks/bench_rl_music.py BASE_RUN --steps 2 --samples 4 --out /tmp/bench-rl-music
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def violation_rate(grids) -> dict:
    """Pooled parallel fifths and octaves per voice-pair transition over ``grids``."""
    from genforge.metrics.music import parallels

    f = o = t = 0
    for g in grids:
        p = parallels(g)
        f, o, t = f + p.fifths, o + p.octaves, t + p.transitions
    return {"fifths": f, "octaves": o, "transitions": t, "rate": (f + o) / t if t else float("nan"),
            "fifths_rate": f / t if t else float("nan")}


@torch.no_grad()
def measure(run_dir: Path, samples: int, seed: int, max_batches: int | None, checkpoint: str = "auto") -> dict:
    from genforge.modalities import modality
    from genforge.runs import load_run

    run = load_run(run_dir, checkpoint=checkpoint)
    tok = run.tokenizer
    g = torch.Generator(device=next(run.model.parameters()).device).manual_seed(seed)
    ids = []
    for s in range(0, samples, 32):
        m = min(32, samples - s)
        ids += run.model.sample(m, g, prompts=[[tok.bos_id]] * m, temperature=1.0)
    report = modality("music").evaluate(run, num_samples=4, max_batches=max_batches, progress=False)
    return {"step": int(run.step), "checkpoint": run.checkpoint.name,
            "violations": violation_rate([tok.to_grid(r) for r in ids]),
            "nll_per_note_val": report.get("nll_per_note_val"), "nll_per_note_test": report.get("nll_per_note_test")}


def bach_floor(run_dir: Path) -> dict:
    from genforge.audit.privacy import training_data
    from genforge.runs import load_run

    data = training_data(load_run(run_dir))
    held = data.pieces.get("test") or data.pieces["val"]
    return violation_rate(held)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("base_run", help="a gpt-jsb run directory (genforge train gpt-jsb)")
    ap.add_argument("--steps", type=int, default=200, help="RL optimizer steps (default 200)")
    ap.add_argument("--batch-size", type=int, default=32, help="pieces per rollout (default 32)")
    ap.add_argument("--samples", type=int, default=64, help="pieces drawn to measure each model (default 64)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the measured samples (default 0)")
    ap.add_argument("--max-batches", type=int, default=None, help="NLL on at most this many batches (default all)")
    ap.add_argument("--out", default=str(HERE / "results" / "rl_music"), help="results folder")
    ap.add_argument("--rl-options", default="", metavar="'OPTIONS'",
                    help="extra `genforge rl` options as one string, e.g. '--kl-coef 0.1 --lr 1e-4'")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    run = Path(__file__).resolve().parent.parent / "runs" / "bench-rl-music" / "rl"  # weights stay out of results/
    cmd = [sys.executable, "-m", "genforge", "rl", args.base_run, "--reward", "no_parallels",
           "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--run-dir", str(run),
           "--overwrite", "--no-progress", *shlex.split(args.rl_options)]
    before = measure(Path(args.base_run), args.samples, args.seed, args.max_batches)
    start = time.monotonic()
    subprocess.run(cmd, check=True)
    seconds = time.monotonic() - start
    # the final policy (not `best`, which RL picks by reward - KL on a few rollouts)
    after = measure(run, args.samples, args.seed, args.max_batches, checkpoint="latest")
    floor = bach_floor(Path(args.base_run))

    def row(name, v, m=None):
        nll = "" if m is None else f"{m['nll_per_note_val']:.3f} | {m['nll_per_note_test'] or float('nan'):.3f}"
        return f"| {name} | {v['rate']:.4f} | {v['fifths']} / {v['octaves']} / {v['transitions']} | {nll or ' | '} |"

    lines = ["| model | parallels per transition | fifths / octaves / transitions | val NLL/note | test NLL/note |",
             "| --- | --- | --- | --- | --- |",
             row(f"base ({before['checkpoint']})", before["violations"], before),
             row(f"RL no_parallels, {args.steps} steps ({after['checkpoint']})", after["violations"], after),
             row("real Bach (held-out chorales)", floor)]
    summary = {"base_run": str(args.base_run), "rl_seconds": round(seconds, 1), "before": before, "after": after,
               "bach": floor, "samples": args.samples, "command": " ".join(sys.argv), "rl_command": " ".join(cmd[2:])}
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
