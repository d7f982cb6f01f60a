"""Diffusion on scikit-learn's 8x8 digits (offline): samplers against steps, guidance, text.

One script run, three trained runs of the shipped presets (each a few CPU minutes):

1. ``diffusion-digits`` (unconditional): FD against sampling steps (10, 20, 50, 100, 1000)
   for every sampler, all on the Karras schedule, each FD the mean over ``--seeds`` draws
   of as many samples as the test split has (180). 1000-step DDPM is the reference.
2. ``diffusion-digits-class``: the fixed classifier's agreement with the requested class,
   and FD, against the guidance scale.
3. ``diffusion-digits-text``: the same for class captions, plus agreement on the held-out
   paraphrases (``genforge.data.captions.PARAPHRASES``), never seen in training.

Also writes sample grids (class rows, prompt rows) to benchmarks/results/.
Usage: python benchmarks/bench_diffusion_digits.py [--seeds 5] [--runs-dir DIR] [--reuse]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, machine, write

STEPS = (10, 20, 50, 100, 1000)
GUIDANCE = (1.0, 1.5, 2.0, 3.0, 5.0)
SAMPLERS = ("ddpm", "ddim", "euler", "heun", "dpmpp-2m")


def train(preset: str, run_dir: Path, reuse: bool) -> dict:
    if reuse and (run_dir / "checkpoints").is_dir():
        return {"preset": preset, "reused": True}
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "genforge", "train", preset, "--run-dir", str(run_dir), "--overwrite",
                    "--no-progress"], check=True, stdout=subprocess.DEVNULL)
    return {"preset": preset, "train_wall_s": time.perf_counter() - t}


def scorer(run, samples: int | None = None):
    from genforge.metrics.evaluate_images import _load_heldout, image_report
    from genforge.metrics.extractor import load_extractor

    data = _load_heldout(run)
    extractor = load_extractor(data)
    n = min(samples or len(data.test), len(data.test))

    def score(seed: int, requested=None, **options) -> dict:
        g = torch.Generator().manual_seed(seed)
        x = run.model.sample(n, g, labels=requested, **options)
        return image_report(x.float().clamp(0, 1), data, extractor, requested, seed=seed)

    return score, extractor, n


def steps_sweep(run, seeds: int) -> list[dict]:
    score, _, _ = scorer(run)
    rows = []
    for sampler in SAMPLERS:
        for steps in STEPS:
            fds = [score(s, sampler=sampler, sampling_steps=steps)["fd"] for s in range(seeds)]
            rows.append({"sampler": sampler, "steps": steps, "fd": statistics.mean(fds),
                         "fd_sd": statistics.stdev(fds) if len(fds) > 1 else 0.0})
            print(rows[-1], flush=True)
    return rows


def guidance_sweep(run, seeds: int, text: bool, dataset: str = "digits", samples: int | None = None,
                   scales=GUIDANCE, per_paraphrase: int = 50) -> list[dict]:
    from genforge.data.captions import PARAPHRASES
    from genforge.metrics.classes import label_agreement

    score, extractor, n = scorer(run, samples)
    requested = torch.arange(n) % 10
    rows = []
    for w in scales:
        reports = [score(s, requested, guidance=w) for s in range(seeds)]
        row = {"guidance": w, "label_agreement": statistics.mean(r["label_agreement"] for r in reports),
               "fd": statistics.mean(r["fd"] for r in reports)}
        if text:
            hits = []
            for prompt, k in PARAPHRASES[dataset]:
                x = run.model.sample(per_paraphrase, torch.Generator().manual_seed(0), prompt=[prompt], guidance=w)
                hits.append(label_agreement(extractor.run(x.float())[1], torch.full((per_paraphrase,), k)))
            row["paraphrase_agreement"] = statistics.mean(hits)
            row["paraphrase_each"] = hits
        rows.append(row)
        print(row, flush=True)
    return rows


def grids(class_run, text_run) -> None:
    from genforge.data.grids import save_grid

    labels = torch.arange(10).repeat_interleave(10)
    x = class_run.model.sample(100, torch.Generator().manual_seed(0), labels=labels)
    save_grid(x, RESULTS / "diffusion_digits_class_grid.png", class_run.spec, nrow=10)
    prompts = ["a digit 7", "a picture of a handwritten three", "the numeral seven written by hand",
               "a scribbled zero", "handwriting showing a nine", "an eight, handwritten"]
    x = torch.cat([text_run.model.sample(8, torch.Generator().manual_seed(i), prompt=[p]) for i, p in enumerate(prompts)])
    save_grid(x, RESULTS / "diffusion_digits_prompt_grid.png", text_run.spec,
              [p for p in prompts for _ in range(8)], nrow=8)


def render(result: dict) -> str:
    lines = ["# Diffusion on 8x8 digits: samplers, steps and guidance", "",
             f"Machine: {result['machine']}. FD in genforge's digits feature space, each cell the mean of "
             f"{result['seeds']} draws of {result['n']} samples against the {result['n']} test images "
             f"(floor FD(train, test) at that size: {result['floor_fd']:.2f}; FD(noise, test): "
             f"{result['noise_fd']:.1f}). All samplers on the Karras schedule (rho 7), EMA weights, "
             "preset `diffusion-digits` (EDM).", "",
             "| sampler | " + " | ".join(f"{s} steps" for s in STEPS) + " |",
             "| --- |" + " --- |" * len(STEPS)]
    by = {(r["sampler"], r["steps"]): r for r in result["steps_sweep"]}
    for sampler in SAMPLERS:
        lines.append(f"| {sampler} | " + " | ".join(f"{by[sampler, s]['fd']:.2f} +- {by[sampler, s]['fd_sd']:.2f}"
                                                   for s in STEPS) + " |")
    ref = by["ddpm", 1000]["fd"]
    best20 = min(by["dpmpp-2m", 20]["fd"], by["heun", 20]["fd"])
    lines += ["", f"Goal: DPM-Solver++ or Heun at 20 steps within 10% of 1000-step DDPM's FD: "
                  f"{best20:.2f} vs {ref:.2f} ({100 * (best20 / ref - 1):+.0f}%).", "",
              "## Guidance (fixed classifier's agreement with the requested class)", "",
              "| guidance | class model: agreement | class model: FD | text model: agreement | "
              "text model: FD | text model: unseen paraphrases |", "| --- | --- | --- | --- | --- | --- |"]
    for c, t in zip(result["class_guidance"], result["text_guidance"], strict=True):
        lines.append(f"| {c['guidance']:g} | {c['label_agreement']:.3f} | {c['fd']:.2f} | {t['label_agreement']:.3f} "
                     f"| {t['fd']:.2f} | {t['paraphrase_agreement']:.3f} |")
    lines += ["", "Chance agreement is 0.10. Text prompts for the agreement column are each class's first "
                  "training caption; paraphrases are 8 held-out sentences, 50 samples each.",
              "", "Grids: `diffusion_digits_class_grid.png` (rows = classes 0-9), "
                  "`diffusion_digits_prompt_grid.png` (rows = prompts, paraphrases included)."]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=5, help="draws per FD cell (default 5)")
    p.add_argument("--runs-dir", default="runs/bench-diffusion-digits", help="where the three runs are trained")
    p.add_argument("--reuse", action="store_true", help="reuse runs already trained in --runs-dir")
    args = p.parse_args()
    from genforge.runs import load_run

    root = Path(args.runs_dir)
    trained = [train(preset, root / preset, args.reuse) for preset in
               ("diffusion-digits", "diffusion-digits-class", "diffusion-digits-text")]
    uncond, cls, txt = (load_run(root / name) for name in
                        ("diffusion-digits", "diffusion-digits-class", "diffusion-digits-text"))
    for run in (uncond, cls, txt):
        run.model.eval()
    sweep = steps_sweep(uncond, args.seeds)
    score, _, n = scorer(uncond)
    floors = score(0, sampling_steps=1)
    result = {"machine": machine(), "seeds": args.seeds, "n": n, "runs": trained,
              "floor_fd": floors["floor_fd_train_test"], "noise_fd": floors["floor_fd_noise"],
              "steps_sweep": sweep, "class_guidance": guidance_sweep(cls, args.seeds, text=False),
              "text_guidance": guidance_sweep(txt, args.seeds, text=True)}
    grids(cls, txt)
    write("diffusion_digits", result, render(result))


if __name__ == "__main__":
    main()
