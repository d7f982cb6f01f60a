"""The GAN on Fashion-MNIST at the VAE's and diffusion's CPU budget, three seeds each.

For ``gan-fashion-mnist`` and ``gan-fashion-mnist-class``: calibrate seconds per step through
the genforge trainer (the two presets in alternation, medians), train each for as many steps
as fit ``--budget-s`` with seeds 0, 1, 2, then score ``--samples`` samples of each run
(FD, KID, precision/recall, coverage, class entropy, memorization; label agreement for the
conditional model) and record training images/s and the training process's own peak memory.
All three seeds are reported, to show whether training is stable.

Anchor, not comparable: Lucic et al. 2018 ("Are GANs Created Equal?") report Inception-FID
of about 21.5-30.7 on Fashion-MNIST for standard GANs; FD here is in genforge's own
Fashion-MNIST feature space, so only the floors beside it give it scale.

Usage: GENFORGE_DATA=... python benchmarks/bench_gan.py [--budget-s 600] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_image_families import seconds_per_step
from common import machine, write

PRESETS = ("gan-fashion-mnist", "gan-fashion-mnist-class")
# Runs the CLI in this child and reports the child's own peak memory (ru_maxrss of the
# process itself, not of a forked copy of the driver).
CHILD = ("import resource, sys\nfrom genforge.cli import main\nrc = main(sys.argv[1:])\n"
         "print('PEAK_RSS_KIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\nsys.exit(rc)")
KEYS = ("fd", "kid", "precision", "recall", "coverage", "class_entropy_norm", "memorization_near_copy_fraction",
        "label_agreement")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget-s", type=float, default=600.0)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--samples", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--runs-dir", default="runs/bench-gan")
    p.add_argument("--s-per-step", nargs="*", default=[], metavar="PRESET=S",
                   help="skip calibrating PRESET: use S seconds per step (from an earlier calibration)")
    p.add_argument("--reuse", action="store_true",
                   help="score a run that already reached its step count instead of training it again")
    args = p.parse_args()
    from genforge.evaluate import evaluate_run
    from genforge.runs import load_run

    given = {k: float(v) for k, v in (x.split("=") for x in args.s_per_step)}
    per_step = {name: [given[name]] if name in given else [] for name in PRESETS}
    for _ in range(args.repeats):  # A B A B
        for name in PRESETS:
            if name not in given:
                per_step[name].append(seconds_per_step(name, []))
    rows = []
    for name in PRESETS:
        s = statistics.median(per_step[name])
        steps = max(1, int(args.budget_s / s))
        for seed in args.seeds:
            run_dir = Path(args.runs_dir) / f"{name}-seed{seed}"
            if args.reuse and _finished(run_dir, steps):
                report = evaluate_run(load_run(run_dir), num_samples=args.samples, progress=False)
                rows.append({"preset": name, "seed": seed, "steps": steps, "s_per_step": s,
                             "train_images_per_s": 64 / s, "peak_rss_mib": None, **report})
                print({k: rows[-1].get(k) for k in ("preset", "seed", "fd", "label_agreement")}, flush=True)
                continue
            proc = subprocess.run([sys.executable, "-c", CHILD, "train", name, f"train.max_steps={steps}",
                                   f"train.seed={seed}", "--run-dir", str(run_dir), "--overwrite", "--no-progress"],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                rows.append({"preset": name, "seed": seed, "failed": proc.stderr.strip().splitlines()[-1:]})
                continue
            peak = int(next(line.split()[1] for line in proc.stdout.splitlines() if line.startswith("PEAK_RSS_KIB")))
            report = evaluate_run(load_run(run_dir), num_samples=args.samples, progress=False)
            rows.append({"preset": name, "seed": seed, "steps": steps, "s_per_step": s,
                         "train_images_per_s": 64 / s, "peak_rss_mib": peak / 1024, **report})
            print({k: rows[-1].get(k) for k in ("preset", "seed", "fd", "label_agreement")}, flush=True)
    result = {"machine": machine(), "budget_s": args.budget_s, "samples": args.samples, "runs": rows}
    write("gan_fashion_mnist", result, render(result))


def _finished(run_dir: Path, steps: int) -> bool:
    from genforge.checkpoint import latest_checkpoint

    latest = latest_checkpoint(run_dir) if run_dir.is_dir() else None
    return latest is not None and latest.name == f"step_{steps:07d}"


def render(result: dict) -> str:
    lines = [f"# GAN on Fashion-MNIST, {result['budget_s'] / 60:.0f} CPU minutes per run, three seeds", "",
             f"Machine: {result['machine']}. {result['samples']} samples per run against as many test images "
             "in genforge's Fashion-MNIST feature space; checkpoint `best` (lowest FD on the fixed validation "
             "sample), EMA generator.", "",
             "| preset | seed | steps | " + " | ".join(KEYS) + " | train images/s | peak MiB |",
             "| --- | --- | --- |" + " --- |" * (len(KEYS) + 2)]
    for r in result["runs"]:
        if "failed" in r:
            lines.append(f"| {r['preset']} | {r['seed']} | failed: {' '.join(r['failed'])} |")
            continue
        vals = " | ".join("" if r.get(k) is None else f"{r[k]:.3f}" for k in KEYS)
        peak = "n/a" if r["peak_rss_mib"] is None else f"{r['peak_rss_mib']:.0f}"
        lines.append(f"| {r['preset']} | {r['seed']} | {r['steps']} | {vals} | {r['train_images_per_s']:.0f} | "
                     f"{peak} |")
    ok = [r for r in result["runs"] if "failed" not in r]
    if ok:
        lines += ["", f"Floors: FD(train, test) {ok[0]['floor_fd_train_test']:.2f}, FD(noise, test) "
                      f"{ok[0]['floor_fd_noise']:.1f}. Lucic et al. 2018 report Inception-FID 21.5-30.7 on "
                      "Fashion-MNIST for standard GANs: a different feature space, not comparable."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
