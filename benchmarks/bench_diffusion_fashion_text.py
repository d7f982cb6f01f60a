"""Text-to-image diffusion on Fashion-MNIST with the frozen all-MiniLM-L6-v2 encoder.

Trains the ``diffusion-fashion-mnist-text`` preset (about 12 CPU minutes), then reports
against the guidance scale: the fixed classifier's agreement with the class of each
class caption, FD (``--samples`` samples), and agreement on the held-out paraphrases
(``genforge.data.captions.PARAPHRASES``; none is a training caption). Writes a grid of
class captions and one of prompts, paraphrases included, for the README.

Usage: GENFORGE_DATA=... python benchmarks/bench_diffusion_fashion_text.py [--reuse]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_diffusion_digits import guidance_sweep, train
from common import RESULTS, machine, write

PROMPTS = ["a pair of sneakers", "an elegant evening dress", "a leather handbag to carry things",
           "warm knitted sweater", "blue jeans", "sturdy boots for autumn", "a t-shirt", "a coat"]


def render(result: dict) -> str:
    lines = ["# Text-to-image diffusion on Fashion-MNIST (frozen all-MiniLM-L6-v2)", "",
             f"Machine: {result['machine']}. Preset `diffusion-fashion-mnist-text`, {result['step']} steps. "
             f"Agreement = the fixed Fashion-MNIST classifier's agreement with the prompt's class; "
             f"{result['samples']} samples for class captions and FD, {result['per_paraphrase']} per paraphrase; "
             "dpmpp-2m, 20 steps.", "",
             "| guidance | class captions: agreement | FD | unseen paraphrases: agreement |", "| --- | --- | --- | --- |"]
    for r in result["guidance"]:
        lines.append(f"| {r['guidance']:g} | {r['label_agreement']:.3f} | {r['fd']:.2f} | {r['paraphrase_agreement']:.3f} |")
    lines += ["", "Per paraphrase at guidance 3: " + ", ".join(
        f"\"{p}\" {a:.2f}" for p, a in zip(result["paraphrases"], next(
            r for r in result["guidance"] if r["guidance"] == 3.0)["paraphrase_each"], strict=True)),
        "", "Grid: `diffusion_fashion_text_prompt_grid.png` (rows = prompts; all but the last two are "
            "paraphrases never used in training)."]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", default="runs/bench-diffusion-fashion-text")
    p.add_argument("--reuse", action="store_true")
    p.add_argument("--samples", type=int, default=500, help="samples per guidance scale for agreement and FD")
    p.add_argument("--per-paraphrase", type=int, default=20)
    args = p.parse_args()
    from genforge.data.captions import PARAPHRASES
    from genforge.data.grids import save_grid
    from genforge.runs import load_run

    trained = train("diffusion-fashion-mnist-text", Path(args.run_dir), args.reuse)
    run = load_run(args.run_dir)
    run.model.eval()
    sweep = guidance_sweep(run, 1, text=True, dataset="fashion-mnist", samples=args.samples,
                           scales=(1.0, 2.0, 3.0, 5.0), per_paraphrase=args.per_paraphrase)
    x = torch.cat([run.model.sample(8, torch.Generator().manual_seed(i), prompt=[p]) for i, p in enumerate(PROMPTS)])
    save_grid(x, RESULTS / "diffusion_fashion_text_prompt_grid.png", run.spec, nrow=8)
    result = {"machine": machine(), "step": run.step, "samples": args.samples, "train": trained,
              "paraphrases": [p for p, _ in PARAPHRASES["fashion-mnist"]], "prompts": PROMPTS, "guidance": sweep,
              "per_paraphrase": args.per_paraphrase}
    write("diffusion_fashion_text", result, render(result))


if __name__ == "__main__":
    main()
