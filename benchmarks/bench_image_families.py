"""The image families side by side on Fashion-MNIST at one CPU training budget.

For each family preset (VAE with the discretized-logistic likelihood, so that its bits/dim
is an 8-bit likelihood like diffusion's; diffusion; GAN):

- calibrate seconds per step through the genforge trainer, the families in alternation
  (A B A B), medians; train for as many steps as fit ``--budget-s`` (the cosine LR schedule
  ends there);
- evaluate on the test split: FD, KID, precision/recall, coverage in the shipped
  extractor's features with ``--samples`` samples (the same number for every family: FD is
  biased by sample size), and bits/dim (VAE: IWAE bound k=100; diffusion: PF-ODE, 40 Heun
  steps, ``--bpd-images`` images);
- sampling images/s at batch 256, families in alternation, medians.

Usage: GENFORGE_DATA=... python benchmarks/bench_image_families.py [--budget-s 600]
       [--diffusion-run DIR]  (reuse a diffusion-fashion-mnist run trained at this budget)
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, write

FAMILIES = {
    "vae": ("vae-fashion-mnist", ["model.likelihood=logistic"]),
    "diffusion": ("diffusion-fashion-mnist", []),
    "gan": ("gan-fashion-mnist", []),
}


def seconds_per_step(preset: str, overrides: list[str], steps: int = 20) -> float:
    from genforge.config import load_config
    from genforge.train.trainer import Trainer, build

    cfg, mcfg = load_config(preset, [*overrides, "train.max_steps=1000000", "train.eval_every=0",
                                     "train.checkpoint_every=1000000", "train.plot=false"])
    with tempfile.TemporaryDirectory(prefix="bench-families-") as tmp:
        trainer = Trainer(cfg, *build(cfg, mcfg), Path(tmp), stop_after=3, progress=False)
        trainer.fit()
        trainer.stop_after = 3 + steps
        t = time.perf_counter()
        trainer.fit()
        return (time.perf_counter() - t) / steps


def sample_rate(model, n: int = 256) -> float:
    t = time.perf_counter()
    model.sample(n, torch.Generator().manual_seed(0))
    return n / (time.perf_counter() - t)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget-s", type=float, default=600.0)
    p.add_argument("--samples", type=int, default=2000, help="generated images scored per family")
    p.add_argument("--bpd-images", type=int, default=200)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--runs-dir", default="runs/bench-image-families")
    p.add_argument("--diffusion-run", help="an already trained diffusion-fashion-mnist run at this budget")
    p.add_argument("--reuse", action="store_true", help="reuse runs already trained in --runs-dir")
    p.add_argument("--families", nargs="+", choices=tuple(FAMILIES), default=list(FAMILIES))
    args = p.parse_args()
    from genforge.config import load_config
    from genforge.evaluate import evaluate_run
    from genforge.runs import load_run

    names = list(args.families)
    per_step = {f: [] for f in names}
    for _ in range(args.repeats):  # A B A B
        for f in names:
            per_step[f].append(seconds_per_step(*FAMILIES[f]))
    rows = {}
    for f in names:
        preset, overrides = FAMILIES[f]
        cfg, _ = load_config(preset, overrides)
        s = statistics.median(per_step[f])
        row = {"preset": preset, "overrides": overrides, "s_per_step": s,
               "train_images_per_s": cfg.train.batch_size / s}
        run_dir = Path(args.runs_dir) / f
        if f == "diffusion" and args.diffusion_run:
            run_dir = Path(args.diffusion_run)
            row["reused_run"] = str(run_dir)
        elif args.reuse and (run_dir / "checkpoints").is_dir():
            row["reused_run"] = str(run_dir)
        else:
            steps = max(1, int(args.budget_s / s))
            t = time.perf_counter()
            subprocess.run([sys.executable, "-m", "genforge", "train", preset, *overrides, f"train.max_steps={steps}",
                            "--run-dir", str(run_dir), "--overwrite", "--no-progress"], check=True,
                           stdout=subprocess.DEVNULL)
            row.update(steps=steps, train_wall_s=time.perf_counter() - t)
        rows[f] = row
    runs = {f: load_run(Path(rows[f].get("reused_run") or Path(args.runs_dir) / f)) for f in names}
    rates = {f: [] for f in names}
    for _ in range(args.repeats):
        for f in names:
            rates[f].append(sample_rate(runs[f].model.eval()))
    for f in names:
        opts = {"vae": {"iwae_k": 100}, "diffusion": {"bpd_images": args.bpd_images}}.get(f, {})
        report = evaluate_run(runs[f], num_samples=args.samples, nll_images=args.bpd_images, progress=False, **opts)
        rows[f].update(sample_images_per_s=statistics.median(rates[f]), **report)  # report has "step"
        print(f, {k: rows[f][k] for k in ("fd", "kid", "precision", "recall")}, flush=True)
    result = {"machine": machine(), "budget_s": args.budget_s, "samples": args.samples, "families": rows}
    write("image_families_fashion_mnist", result, render(result))


def render(result: dict) -> str:
    lines = [f"# Image families on Fashion-MNIST, {result['budget_s'] / 60:.0f} CPU minutes each", "",
             f"Machine: {result['machine']}. {result['samples']} samples per family against as many test "
             "images, genforge's Fashion-MNIST extractor. Speeds are medians of alternating runs in one script.",
             "", "| family (preset) | steps | FD | KID | precision | recall | coverage | bits/dim | "
                 "train images/s | sample images/s |", "| --- |" + " --- |" * 9]
    for f, r in result["families"].items():
        bpd = r.get("bits_per_dim", r.get("nll_bits_per_dim"))
        bpd = "n/a" if bpd is None else f"{bpd:.3f}"
        lines.append(f"| {f} (`{r['preset']}` {' '.join(r['overrides'])}) | {r['step']} | {r['fd']:.2f} | "
                     f"{r['kid']:.4f} | {r['precision']:.3f} | {r['recall']:.3f} | {r['coverage']:.3f} | "
                     f"{bpd} | {r['train_images_per_s']:.0f} | {r['sample_images_per_s']:.1f} |")
    any_row = next(iter(result["families"].values()))
    lines += ["", f"Floors at this sample size: FD(train, test) {any_row['floor_fd_train_test']:.2f}, "
                  f"FD(noise, test) {any_row['floor_fd_noise']:.1f}.",
              "bits/dim: VAE = IWAE bound (k=100) of its discretized-logistic likelihood; diffusion = "
              "probability-flow ODE with uniform dequantization (an upper bound in expectation). Both are "
              "8-bit likelihoods on the first test images, so they share a column. A GAN defines no likelihood."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
