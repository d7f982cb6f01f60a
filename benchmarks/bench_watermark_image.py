"""How well the image watermarks hold on 8x8 digits (issue #18): Tree-Ring (diffusion runs) and
the post-hoc spread-spectrum mark (any family), under the robustness list of watermark/attacks.py.

Anchor: Wen et al. 2023 (Tree-Ring, arXiv 2305.20030), Table 1: AUC 0.975 averaged over their
attacks for Tree-Ring_Rings on Stable Diffusion (64x64x4 latents, ring radius 10, ~1,250 key
coordinates per image). An 8x8 digit's ring (radius 2) has 13 coefficients, so one image holds
little; the benchmark therefore also scores grids of 16 images tested together (how
`genforge detect` reads a `genforge sample` grid).

For each run: N unmarked samples and, from the same seeds, N Tree-Ring-marked samples (diffusion
only: the mark in x_T) and the N unmarked samples with the post-hoc mark added (default informed
embedding: images that cannot hold it at PSNR >= 30 dB stay unmarked and count as misses). Each
attack is applied to every set, then per mark and attack:
  tpr@1%fpr   share of marked statistics above the 99% quantile of the unmarked ones
  auc         P(marked statistic > unmarked statistic) (Mann-Whitney)
  tpr@p<.01   share of marked with p < 0.01 by the detector's own null, and fpr@p<.01 the same
              for unmarked (the calibration check: should be <= ~1%)
Statistics: Tree-Ring, the Student t of the cosine between the inverted ring and the key
(per image) or the mean ring of the grid (treering.combined_pvalue); post-hoc, z (per image) or
the grid's z over summed residuals (posthoc.combined_z). Grids: ``--grids`` random 16-subsets of
each set (overlapping, so the quantile is of dependent draws). FD cost: Frechet distance in the
shipped digits extractor's features, samples vs the 180 test digits, marked minus unmarked.

Usage: python benchmarks/bench_watermark_image.py [--diffusion-run DIR] [--vae-run DIR]
       [--samples 256] [--inversion-steps 20]; runs are trained here when not given.
Smoke: ... --samples 32 --grids 20 --diffusion-steps 30 --vae-steps 30 --out-prefix /tmp/wm_img
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import RESULTS, machine  # noqa: E402

from genforge.atomic import atomic_write_text  # noqa: E402
from genforge.watermark import attacks, posthoc, treering  # noqa: E402

KEY = bytes(range(7, 39))  # a fixed benchmark key (not a run's: the numbers must not depend on one)
GRID = 16


def _train(preset: str, steps: int) -> Path:
    from genforge.cli import main

    run = Path(tempfile.mkdtemp(prefix="wm-img-")) / "run"
    code = main(["train", preset, f"train.max_steps={steps}", "train.eval_every=0", "train.plot=false",
                 f"train.checkpoint_every={steps}", "train.device=cpu", "--run-dir", str(run), "--no-progress"])
    if code != 0:
        raise SystemExit(f"training {preset} failed")
    return run


def _auc(pos: torch.Tensor, neg: torch.Tensor) -> float:
    """Mann-Whitney AUC with ties counted half."""
    gt = (pos[:, None] > neg[None, :]).double().mean()
    eq = (pos[:, None] == neg[None, :]).double().mean()
    return float(gt + 0.5 * eq)


def _scores(marked: torch.Tensor, plain: torch.Tensor, p_marked: torch.Tensor, p_plain: torch.Tensor) -> dict:
    thr = torch.quantile(plain, 0.99)
    return {"tpr@1%fpr": round(float((marked > thr).double().mean()), 4), "auc": round(_auc(marked, plain), 4),
            "tpr@p<.01": round(float((p_marked < 0.01).double().mean()), 4),
            "fpr@p<.01": round(float((p_plain < 0.01).double().mean()), 4)}


def _subsets(n: int, count: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randperm(n, generator=g)[:GRID] for _ in range(count)]


def _treering_stats(model, images: torch.Tensor, steps: int, subsets) -> dict:
    """uint8 images -> per-image and per-grid (t, p) of the Tree-Ring test against KEY."""
    from genforge.data.images import to_range

    noise = torch.cat([treering.invert(model, to_range(images[s:s + 128], model.spec.pixel_range), steps).cpu()
                       for s in range(0, images.shape[0], 128)])
    y = treering.ring_coordinates(noise)
    k = treering.key_coordinates(KEY, tuple(images.shape[1:]))
    per = [treering.cosine_test(v, k) for v in y]
    grid = [treering.cosine_test(y[idx].mean(0), k) for idx in subsets]
    return {"image": (torch.tensor([d["t"] for d in per]), torch.tensor([d["p_value"] for d in per])),
            "grid": (torch.tensor([d["t"] for d in grid]), torch.tensor([d["p_value"] for d in grid]))}


def _posthoc_stats(images: torch.Tensor, subsets) -> dict:
    z = posthoc.zscores(images, KEY).double()
    zg = torch.tensor([posthoc.combined_z(images[idx], KEY) for idx in subsets], dtype=torch.float64)
    sf = torch.special.erfc(z / math.sqrt(2)) / 2
    sfg = torch.special.erfc(zg / math.sqrt(2)) / 2
    return {"image": (z, sf), "grid": (zg, sfg)}


def _fd(images: torch.Tensor, extractor, test_feats) -> float:
    from genforge.metrics.frechet import frechet_distance

    return float(frechet_distance(test_feats, extractor.run(images.float() / 255.0)[0]))


def bench_run(name: str, run_dir: Path, args) -> dict:
    from genforge.families.diffusion import Diffusion
    from genforge.metrics.extractor import _dataset, load_extractor
    from genforge.modalities.image import to_uint8
    from genforge.runs import load_run

    run = load_run(run_dir, device="cpu")
    model = run.model.eval()
    is_diffusion = isinstance(model, Diffusion)
    n = args.samples
    with torch.no_grad():
        plain = to_uint8(model.sample(n, torch.Generator().manual_seed(args.seed)).cpu(), run.spec)
        sets = {"plain": plain}
        if is_diffusion:
            tr = model.sample(n, torch.Generator().manual_seed(args.seed),
                              noise_mark=lambda z: treering.mark_noise(z, KEY))
            sets["tree_ring"] = to_uint8(tr.cpu(), run.spec)
    sets["posthoc"], embed_report = posthoc.embed(plain, KEY)
    data = _dataset("digits")
    extractor = load_extractor(data)
    test_feats = extractor.run(data.test.images.float() / 255.0)[0]
    fd = {k: round(_fd(v, extractor, test_feats), 3) for k, v in sets.items()}
    table = attacks.attacks(model if is_diffusion else None, seed=args.seed)
    subsets = _subsets(n, args.grids, args.seed + 1)
    rows = []
    for attack_name, attack in table.items():
        t0 = time.perf_counter()
        with torch.no_grad():
            attacked = {k: attack(v) for k, v in sets.items()}
        marks = {"posthoc": {k: _posthoc_stats(v, subsets) for k, v in attacked.items()
                             if k in ("plain", "posthoc")}}
        if is_diffusion:
            marks["tree_ring"] = {k: _treering_stats(model, v, args.inversion_steps, subsets)
                                  for k, v in attacked.items() if k in ("plain", "tree_ring")}
        for mark, stats in marks.items():
            for unit in ("image", "grid"):
                (sm, pm), (sp, pp) = stats[mark][unit], stats["plain"][unit]
                rows.append({"run": name, "mark": mark, "attack": attack_name, "unit": unit,
                             **_scores(sm, sp, pm, pp)})
        print(f"{name} {attack_name}: {time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)
    return {"run": str(run_dir), "family": run.config.family, "samples": n, "fd_vs_test": fd,
            "fd_cost": {k: round(fd[k] - fd["plain"], 3) for k in fd if k != "plain"},
            "posthoc_embed": {k: (round(v, 3) if isinstance(v, float) else v) for k, v in embed_report.items()},
            "rows": rows}


def _markdown(result: dict) -> str:
    lines = ["# Image watermarks under attack (8x8 digits)", "",
             f"Command: `{result['command']}`  ", f"Machine: {json.dumps(result['machine'])} (shared with other "
             "jobs; no timings are reported)  ", f"Total wall time: {result['wall_s']:.0f} s", "",
             "Anchor: Tree-Ring reports AUC 0.975 averaged over attacks on Stable Diffusion (64x64x4 latents); "
             "an 8x8 digit's ring holds 13 coefficients.", ""]
    for r in result["runs"]:
        lines += [f"## {r['family']} run ({r['samples']} samples per set)", "",
                  f"FD vs the test digits: {r['fd_vs_test']}; cost of each mark (marked - unmarked): {r['fd_cost']}. "
                  f"Post-hoc embedding: {r['posthoc_embed']}.", "",
                  "| mark | attack | unit | TPR@1%FPR | AUC | TPR@p<.01 | FPR@p<.01 |", "|---|---|---|---|---|---|---|"]
        for row in r["rows"]:
            lines.append(f"| {row['mark']} | {row['attack']} | {row['unit']} | {row['tpr@1%fpr']:.3f} | "
                         f"{row['auc']:.3f} | {row['tpr@p<.01']:.3f} | {row['fpr@p<.01']:.3f} |")
        lines.append("")
    lines += ["## Mean AUC over attacks (excluding none/png)", "", "| run | mark | unit | mean AUC |", "|---|---|---|---|"]
    for key, v in result["mean_auc"].items():
        lines.append(f"| {key.replace('/', ' | ')} | {v:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--diffusion-run", help="a diffusion-digits run (default: train one here)")
    ap.add_argument("--vae-run", help="a vae-digits or gan-digits run (default: train a VAE here)")
    ap.add_argument("--diffusion-steps", type=int, default=1500, help="training steps when training diffusion here")
    ap.add_argument("--vae-steps", type=int, default=800, help="training steps when training the VAE here")
    ap.add_argument("--samples", type=int, default=256, help="images per set (unmarked, each mark)")
    ap.add_argument("--grids", type=int, default=200, help="random 16-image subsets per set for grid rows")
    ap.add_argument("--inversion-steps", type=int, default=20, help="DDIM inversion steps (the paper: 50)")
    ap.add_argument("--seed", type=int, default=0, help="sampling and attack seed")
    ap.add_argument("--out-prefix", default=str(RESULTS / "watermark_image"), help="write PREFIX.json and PREFIX.md")
    args = ap.parse_args()
    t0 = time.perf_counter()
    diffusion = Path(args.diffusion_run) if args.diffusion_run else _train("diffusion-digits", args.diffusion_steps)
    other = Path(args.vae_run) if args.vae_run else _train("vae-digits", args.vae_steps)
    runs = [bench_run("diffusion", diffusion, args), bench_run("other", other, args)]
    mean_auc = {}
    for r in runs:
        for mark in sorted({row["mark"] for row in r["rows"]}):
            for unit in ("image", "grid"):
                aucs = [row["auc"] for row in r["rows"] if row["mark"] == mark and row["unit"] == unit
                        and row["attack"] not in ("none", "png")]
                mean_auc[f"{r['family']}/{mark}/{unit}"] = round(sum(aucs) / len(aucs), 4)
    result = {"command": "python " + " ".join(sys.argv), "machine": machine(), "key": "fixed benchmark key",
              "wall_s": time.perf_counter() - t0, "runs": runs, "mean_auc": mean_auc}
    atomic_write_text(Path(args.out_prefix + ".json"), json.dumps(result, indent=2) + "\n")
    atomic_write_text(Path(args.out_prefix + ".md"), _markdown(result))
    print(_markdown(result))


if __name__ == "__main__":
    main()
