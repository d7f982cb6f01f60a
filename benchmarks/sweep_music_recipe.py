"""A short recipe sweep for GPT on the JSB Chorales (issue #19): which preset changes lower the
note-wise validation NLL for a fixed CPU budget.

Every trial trains ``genforge train PRESET`` with its overrides for the same number of steps, its
cosine schedule ending at that step (train.max_steps = the trial length, so the LR decays in time),
then scores the last checkpoint on the whole validation split exactly as ``genforge eval`` does
(note-wise NLL in nats, each note scored once with at least half a context before it).

Wall time is not comparable on a shared machine, so each trial's cost is recorded as training
FLOPs per step: ``model.flops_per_token()`` (6N + attention, PaLM appendix B) x batch x context
tokens; the measured s/step and the load average are written beside it as a rough hint only.

Usage:
  GENFORGE_DATA=/path python benchmarks/sweep_music_recipe.py [--steps 200] [--only NAME ...]
  Results are appended, one JSON line per trial, to --out (default runs/sweep-music/trials.jsonl;
  the table committed under benchmarks/results/music/ is written from it with --table).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# name -> (preset, overrides). The first is the committed gpt-jsb with only its schedule shortened.
TRIALS: dict[str, tuple[str, list[str]]] = {
    "base": ("gpt-jsb", []),
    "nodrop": ("gpt-jsb", ["model.dropout=0.0"]),
    "nodrop-lr2e-3": ("gpt-jsb", ["model.dropout=0.0", "train.lr=2e-3"]),
    "nodrop-ctx128-b64": ("gpt-jsb", ["model.dropout=0.0", "model.block_size=128", "train.batch_size=64"]),
    "nodrop-4x128": ("gpt-jsb", ["model.dropout=0.0", "model.n_embd=128"]),
    "nodrop-6x128": ("gpt-jsb", ["model.dropout=0.0", "model.n_embd=128", "model.n_layer=6"]),
    "nodrop-learned": ("gpt-jsb", ["model.dropout=0.0", "model.pos_embedding=learned"]),
    "nodrop-tr2": ("gpt-jsb", ["model.dropout=0.0", "data.transpose=2"]),
    "nodrop-b16": ("gpt-jsb", ["model.dropout=0.0", "train.batch_size=16"]),
    "nodrop-ctx128-b64-lr2e-3": ("gpt-jsb", ["model.dropout=0.0", "model.block_size=128", "train.batch_size=64",
                                             "train.lr=2e-3"]),
}


def flops_per_step(preset: str, overrides: list[str]) -> tuple[float, int]:
    """Training FLOPs of one optimizer step and the parameter count, from the model alone."""
    from genforge.config import load_config
    from genforge.data.music_tokens import MusicTokenizer
    from genforge.data.spec import DataSpec
    from genforge.families import build_model
    from genforge.modalities.music import MusicModality

    cfg, model_cfg = load_config(preset, overrides)
    tok = MusicTokenizer(cfg.data.music_tokens)
    spec = DataSpec(modality=MusicModality.name, vocab_size=tok.vocab_size, name=cfg.data.name,
                    special_ids={"pad": tok.pad_id, "bos": tok.bos_id, "eos": tok.eos_id})
    model = build_model(cfg.family, model_cfg, spec)
    tokens = cfg.train.batch_size * cfg.train.grad_accum * model_cfg.block_size  # padding included
    return model.flops_per_token() * tokens, model.num_params()


def val_nll(run: Path) -> tuple[float, int]:
    """The last checkpoint's note-wise NLL on the whole validation split (as `genforge eval`)."""
    from genforge.data.music_splits import load_music
    from genforge.modalities.music import note_nll
    from genforge.runs import load_run

    loaded = load_run(run, checkpoint="latest", device="cpu")
    data = load_music(loaded.config.data, loaded.model_config.block_size)
    return note_nll(loaded.model, data.val, data.tokenizer.eos_id, 16, None, skip_ids=data.tokenizer.meta_ids())


def run_trial(name: str, steps: int, out: Path) -> dict:
    preset, overrides = TRIALS[name]
    load0 = os.getloadavg()[0]
    subprocess.run([sys.executable, "-m", "genforge", "train", preset, "--run-dir", str(run_dir(name)),
                    "--overwrite", "--no-progress", *overrides, *schedule(steps)], check=True,
                   stdout=subprocess.DEVNULL)
    return score(name, steps, out, load0)


def run_dir(name: str) -> Path:
    return ROOT / "runs" / "sweep-music" / name


def schedule(steps: int) -> list[str]:
    """The trial's own short schedule: warmup a tenth, cosine to min_lr at the last step."""
    return [f"train.max_steps={steps}", f"train.warmup_steps={max(1, steps // 10)}",
            f"train.eval_every={steps}", f"train.checkpoint_every={steps}", "train.plot=false"]


def score(name: str, steps: int, out: Path, load0: float | None = None) -> dict:
    """Score a trained trial and append its row to ``out`` (also for a trial trained earlier)."""
    preset, overrides = TRIALS[name]
    run = run_dir(name)
    nll, notes = val_nll(run)
    flops, params = flops_per_step(preset, overrides + schedule(steps))
    log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in log if "split" not in r and "loss" in r]
    if train[-1]["step"] != steps:
        raise SystemExit(f"trial {name} stopped at step {train[-1]['step']}, not {steps}")
    row = {"trial": name, "preset": preset, "overrides": overrides, "steps": steps, "val_nll_per_note": nll,
           "val_notes": notes, "train_loss_last": train[-1]["loss"], "params": params,
           "gflops_per_step": flops / 1e9, "s_per_step_shared": train[-1]["elapsed_s"] / steps,
           "loadavg_start": load0, "loadavg_end": os.getloadavg()[0]}
    with open(out, "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)
    return row


def table(rows: list[dict]) -> str:
    lines = ["| trial | steps | overrides (beside the short schedule) | params | GFLOP/step | val NLL/note | "
             "last train loss | s/step (shared, rough) | load avg at end |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in sorted(rows, key=lambda r: r["steps"]):
        lines.append(f"| {r['trial']} | {r['steps']} | {' '.join(r['overrides']) or '(preset)'} | "
                     f"{r['params'] / 1e6:.2f}M | {r['gflops_per_step']:.0f} | {r['val_nll_per_note']:.3f} | "
                     f"{r['train_loss_last']:.3f} | {r['s_per_step_shared']:.1f} | {r['loadavg_end']:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200, help="steps per trial (the schedule ends there)")
    ap.add_argument("--only", nargs="*", choices=sorted(TRIALS), help="run these trials (default: all)")
    ap.add_argument("--out", default=str(ROOT / "runs" / "sweep-music" / "trials.jsonl"))
    ap.add_argument("--table", action="store_true", help="print the table of --out and train nothing")
    ap.add_argument("--score", choices=sorted(TRIALS), help="score this trial's finished run into --out, train nothing")
    args = ap.parse_args()
    out = Path(args.out)
    if args.table:
        print(table([json.loads(line) for line in out.read_text().splitlines()]), end="")
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.score:
        score(args.score, args.steps, out)
        return
    for name in args.only or list(TRIALS):
        run_trial(name, args.steps, out)


if __name__ == "__main__":
    main()
