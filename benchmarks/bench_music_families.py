"""Every genforge family on JSB Chorales: each trained for a fixed step budget, sampled as 2-bar
excerpts (32 16th steps x 4 voices), and scored with the music metrics beside real Bach.

Families and what they see (issue #19):

- gpt (preset gpt-jsb): grid tokens in context windows; a sample is ``<bos>`` continued for
  128 tokens (32 steps).
- seqvae (seqvae-jsb): 2-bar phrases, one latent each (MusicVAE-style); a sample is z ~ N(0, I)
  decoded at temperature 1.
- diffusion (diffusion-jsb-roll) and gan (gan-jsb-roll): 2-bar piano rolls (1 x 48 x 32 images,
  data/music_roll.py) with no family code changed; a sample is thresholded at 0.5 and its voices
  given back by pitch order (``roll_to_grid``).

Real Bach appears twice: JSB test as 2-bar excerpts (what the samples are) and as whole chorales
(``genforge metrics music``'s reference row). Distances are against the JSB test chorales,
memorization against JSB train; the real rows are measured against JSB valid (their floor).
The budget is steps, not time, so the numbers do not depend on how busy the machine is.

Usage (quiet machine; several CPU minutes per family on 2 cores):
  GENFORGE_DATA=/path/with/jsb-chorales python benchmarks/bench_music_families.py
On a busy shared machine add OMP_NUM_THREADS=1: with torch's default thread pool these small
models run about ten times slower when every core is already busy.
A quick end-to-end check that leaves the committed results alone (tiny models, 3 steps):
  GENFORGE_CACHE=/tmp/gfc python benchmarks/bench_music_families.py --tiny --out /tmp/bench-mf
Weights go to runs/bench-music-families/ (gitignored); results to benchmarks/results/music/
(families.md, families.json, families-FAMILY.png).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
STEPS = 32  # 2 bars of 16ths: every family's sample length
# family -> (preset, training steps, overrides); eval only at the end, so the budget is training
FAMILIES = {
    "gpt": ("gpt-jsb", 400, []),
    "seqvae": ("seqvae-jsb", 400, []),
    "diffusion": ("diffusion-jsb-roll", 800, []),
    "gan": ("gan-jsb-roll", 1500, []),
}
TINY = {
    "gpt": ["model.n_layer=1", "model.n_head=2", "model.n_embd=16", "model.block_size=132"],
    "seqvae": ["model.embedding_size=8", "model.encoder_hidden=8", "model.decoder_hidden=16", "model.latent_size=4"],
    "diffusion": ["model.channels=[8,8,8]", "model.sampling_steps=4"],
    "gan": ["model.g_width=8", "model.d_width=8", "model.eval_samples=16"],
}


def genforge(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "genforge", *args], check=True)


def train(family: str, run: Path, steps: int, tiny: bool) -> None:
    preset, _, overrides = FAMILIES[family]
    extra = [*TINY[family], "train.batch_size=8", "train.eval_batches=1"] if tiny else []
    genforge("train", preset, "--run-dir", str(run), "--overwrite", "--no-progress", f"train.max_steps={steps}",
             f"train.eval_every={steps}", f"train.checkpoint_every={steps}", "train.plot=false", *overrides, *extra)


def ensure_extractor(tiny: bool) -> None:
    """The GAN selects checkpoints by FD in the extractor fitted on jsb-roll's test split."""
    from genforge import GenforgeError
    from genforge.metrics.extractor import load_extractor

    try:
        load_extractor("jsb-roll")
    except GenforgeError:
        genforge("metrics", "fit-extractor", "jsb-roll", *(["--epochs", "1"] if tiny else []))


def sample_grids(run_dir: Path, n: int, seed: int = 0) -> tuple[list[np.ndarray], int]:
    """n (STEPS, 4) grids from a run, drawn with one seeded generator (library calls, as the CLI),
    and the training step of the checkpoint they came from."""
    from genforge.data.music_roll import roll_to_grid
    from genforge.families.base import LatentVariableModel
    from genforge.modalities.music_latent import phrase_grid
    from genforge.runs import load_run

    run = load_run(run_dir, device="cpu")
    g = torch.Generator().manual_seed(seed)
    model = run.model
    if run.spec.modality == "image":  # piano rolls in pixel_range
        lo, hi = run.spec.pixel_range
        x = model.sample(n, g)
        return [roll_to_grid(((r - lo) / (hi - lo)).clamp(0, 1).numpy()) for r in x], run.step
    tok = run.tokenizer
    if isinstance(model, LatentVariableModel):
        rows = model.sample(n, g, temperature=1.0)
    else:
        rows = model.sample(n, g, prompts=[[tok.bos_id]] * n, max_new_tokens=4 * STEPS, temperature=1.0)
    return [phrase_grid(tok.to_grid(r), STEPS) for r in rows], run.step


def png(grids: list[np.ndarray], path: Path, title: str) -> None:
    """The first four samples in sequence (8 bars) as one piano roll."""
    from genforge.data.music import grid_notes
    from genforge.data.music_render import piano_roll_png

    path.unlink(missing_ok=True)  # the benchmark's own output, rewritten each run
    piano_roll_png(grid_notes(np.concatenate(grids[:4])), path, title=title)


def interpolation(run: Path, out: Path, heldout: list[np.ndarray]) -> None:
    """MusicVAE's demo: the openings of two JSB test chorales and the 8-point slerp between
    their latents, decoded greedily, as one MIDI file (through `genforge sample`)."""
    from genforge.data.music import grid_to_midi

    a, b, path = (out / f"families-seqvae-{n}.mid" for n in ("a", "b", "interpolation"))
    for p in (a, b, path):
        p.unlink(missing_ok=True)  # the benchmark's own outputs, rewritten each run
    grid_to_midi(heldout[0][:STEPS], a)
    grid_to_midi(heldout[1][:STEPS], b)
    genforge("sample", str(run), "--interpolate", str(a), str(b), "--interp-points", "8", "--out", str(path))


def cell(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, int):
        return str(v)
    return f"{v:.3g}" if v != 0 and abs(v) < 0.01 else (f"{v:.4f}" if abs(v) < 10 else f"{v:.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(HERE / "results" / "music"), help="results folder")
    ap.add_argument("--runs", default=str(HERE.parent / "runs" / "bench-music-families"), help="run folders")
    ap.add_argument("--samples", type=int, default=128, help="2-bar samples scored per family (default 128)")
    ap.add_argument("--families", nargs="*", default=list(FAMILIES), choices=list(FAMILIES))
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every family's step budget (default 1)")
    ap.add_argument("--tiny", action="store_true", help="tiny models, 3 steps, 8 samples: a smoke test")
    ap.add_argument("--skip-train", action="store_true", help="score the runs already in --runs")
    args = ap.parse_args()
    from genforge.data.music_roll import excerpts
    from genforge.metrics.music.reference import load_reference
    from genforge.metrics.music.table import ROWS, music_metrics

    n = 8 if args.tiny else args.samples
    out, runs = Path(args.out), Path(args.runs)
    out.mkdir(parents=True, exist_ok=True)
    ref = load_reference("jsb")
    columns: dict[str, dict] = {}
    budget = {}
    for fam in args.families:
        steps = 3 if args.tiny else max(1, round(FAMILIES[fam][1] * args.scale))
        budget[fam] = {"preset": FAMILIES[fam][0], "steps": steps}
        if not args.skip_train:
            if fam == "gan":
                ensure_extractor(args.tiny)
            train(fam, runs / fam, steps, args.tiny)
        grids, steps = sample_grids(runs / fam, n)  # the step of the checkpoint sampled (best or latest)
        budget[fam]["checkpoint_step"] = steps
        columns[f"{fam} ({FAMILIES[fam][0]}, {steps} steps)"] = ref.score(grids)
        png(grids, out / f"families-{fam}.png", f"{fam}: 4 samples of 2 bars ({steps} training steps)")
        if fam == "seqvae":
            interpolation(runs / fam, out, ref.heldout)
    real = [e for g in ref.heldout for e in excerpts(g, STEPS)]
    columns["real Bach: JSB test, 2-bar excerpts"] = music_metrics(real, against=ref.floor,
                                                                   copies=ref.copies("floor_train"))
    columns["real Bach: JSB test, whole chorales"] = ref.table()
    names = list(columns)
    lines = ["| metric | " + " | ".join(names) + " |", "| --- |" + " --- |" * len(names)]
    lines += [f"| {key} | " + " | ".join(cell(columns[c].get(key)) for c in names) + " |"
              for key, _ in ROWS if any(key in columns[c] for c in names)]
    meanings = [f"- {key}: {text}" for key, text in ROWS if any(key in columns[c] for c in names)]
    command = "python benchmarks/" + " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
    md = ["# Every family on JSB Chorales: 2-bar samples, music metrics beside real Bach", "",
          f"Command: `{command}` ({n} samples per family; budgets in training steps, see the script).", "",
          *lines, "", "Rows:", *meanings, ""]
    (out / "families.md").write_text("\n".join(md))
    clean = {c: {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
             for c, row in columns.items()}
    (out / "families.json").write_text(json.dumps({"command": command, "samples": n, "budget": budget,
                                                   "columns": clean}, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
