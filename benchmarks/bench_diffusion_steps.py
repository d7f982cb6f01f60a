"""FD against sampling steps for each sampler on a trained diffusion-digits run (issue #20).

The goal: a 20-step sampler within 10% of the FD of 1000-step ancestral DDPM (the reference,
Ho et al. 2020). Deterministic ODE samplers (ddim, heun, dpmpp-2m) stop improving near an FD
above DDPM-1000's; two stochastic samplers try to close the gap at few steps:
``heun-churn``, Karras et al. 2022 (algorithm 2: fresh noise before each Heun step), whose
S_churn, S_tmin, S_tmax, S_noise are tuned per data set (their table 5; ``--churn`` gives one
row per setting), and ``dpmpp-2m-sde``, the SDE form of DPM-Solver++(2M) (Lu et al. 2022).

Scoring: every draw is ``--samples`` images from seed s (s = 0 .. seeds-1), embedded by
genforge's fixed digits feature extractor (128 features, as diffusion_digits.md), and its FD
taken against two references: the run's whole training split (the main column: ~1400 images,
so the reference's own covariance is well estimated) and its 180-image test split (as
diffusion_digits.md; noisier, since 180 images barely span 128 dimensions). The noise floor is
the FD between the reference sampler's seed-0 and seed-1 draws, and the sd over seeds.
Each draw's features are cached under RUN_DIR/bench-steps-cache/, so a rerun with more
samplers or steps reuses the expensive DDPM-1000 draws. NFE: network evaluations per sample.

Usage: python benchmarks/bench_diffusion_steps.py RUN_DIR [--seeds 2] [--samples 500]
       [--steps 10,20,50,100] [--samplers ddpm,ddim,heun,dpmpp-2m,dpmpp-2m-sde,heun-churn]
       [--churn 80:0.05:50:1.003,30:0.01:1:1.007] [--reference-steps 1000] [--results DIR]
RUN_DIR: a run of the ``diffusion-digits`` preset (``genforge train diffusion-digits``).
Smoke run: ``--seeds 2 --steps 2,3 --reference-steps 4 --samples 16 --results /tmp/x``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, machine, write

STEPS = (10, 20, 50, 100)
SAMPLERS = ("ddpm", "ddim", "heun", "dpmpp-2m", "dpmpp-2m-sde", "heun-churn")
SECOND_ORDER = {"heun", "heun-churn"}  # two evaluations per step, one on the last
CHURN_KEYS = ("s_churn", "s_tmin", "s_tmax", "s_noise")


def nfe(sampler: str, steps: int) -> int:
    return 2 * steps - 1 if sampler in SECOND_ORDER else steps


def ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got '{text}'") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected whole numbers >= 1, got '{text}'")
    return values


def churns(text: str) -> list[dict]:
    """'S_churn[:S_tmin:S_tmax:S_noise],...' -> one settings dict per entry; missing fields take
    the sampler's defaults (Karras et al. table 5, ImageNet-64)."""
    from genforge.diffusion.samplers import CHURN_DEFAULTS, check_churn

    out = []
    for entry in (e for e in text.split(",") if e):
        parts = entry.split(":")
        if len(parts) > 4:
            raise argparse.ArgumentTypeError(f"'{entry}': at most S_churn:S_tmin:S_tmax:S_noise")
        try:
            setting = {**CHURN_DEFAULTS, **{k: float(v) for k, v in zip(CHURN_KEYS, parts, strict=False)}}
            check_churn(**setting)
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"'{entry}': {e}") from None
        out.append(setting)
    if not out:
        raise argparse.ArgumentTypeError("expected S_churn[:S_tmin:S_tmax:S_noise] entries")
    return out


def names(text: str) -> list[str]:
    from genforge.diffusion.samplers import SAMPLERS as REGISTERED

    values = [v for v in text.split(",") if v]
    unknown = [v for v in values if v not in REGISTERED]
    if unknown or not values:
        raise argparse.ArgumentTypeError(f"unknown sampler(s) {', '.join(unknown) or '(none)'}; choose from "
                                         f"{', '.join(REGISTERED)}")
    return values


def churn_label(setting: dict) -> str:
    return "heun-churn ({})".format(", ".join(f"{k[2:]} {setting[k]:g}" for k in CHURN_KEYS))


class Scorer:
    """Features of sample draws (cached per sampler, settings, steps, seed, count) and their FD
    against the training and test splits' features."""

    def __init__(self, run, samples: int, batch: int = 500):
        from genforge.metrics.evaluate_images import _load_heldout
        from genforge.metrics.extractor import load_extractor

        self.run, self.samples, self.batch = run, samples, batch
        data = _load_heldout(run)
        self.extractor = load_extractor(data)
        self.refs = {split: self.features(getattr(data, split).images.float() / 255.0) for split in ("train", "test")}
        self.cache = run.run_dir / "bench-steps-cache"
        self.cache.mkdir(exist_ok=True)
        # floor of the test column: as many training images as samples, against the test split
        idx = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(0))[:samples]
        self.floor_train_vs_test = self.fd(self.refs["train"][idx], "test")

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.extractor.run(images)[0]

    def fd(self, feats: torch.Tensor, split: str) -> float:
        from genforge.metrics.frechet import frechet_distance

        return frechet_distance(self.refs[split], feats)

    def draw(self, sampler: str, key: str, steps: int, seed: int) -> torch.Tensor:
        """(samples, 128) features of one draw; ``key`` names the sampler's settings."""
        from genforge.atomic import atomic_write

        path = self.cache / f"{key}-{steps}-seed{seed}-n{self.samples}-step{self.run.step}.pt"
        if path.is_file():
            return torch.load(path)
        g, parts = torch.Generator().manual_seed(seed), []
        for start in range(0, self.samples, self.batch):
            x = self.run.model.sample(min(self.batch, self.samples - start), g, sampler=sampler,
                                      sampling_steps=steps)
            parts.append(self.features(x.float().clamp(0, 1)))
        feats = torch.cat(parts)
        atomic_write(path, lambda f: torch.save(feats, f))
        return feats


def cell(scorer: Scorer, seeds: int, sampler: str, key: str, steps: int, label: str) -> tuple[dict, list]:
    t = time.perf_counter()
    draws = [scorer.draw(sampler, key, steps, s) for s in range(seeds)]
    row = {"sampler": label, "steps": steps, "nfe": nfe(sampler, steps)}
    for split in ("train", "test"):
        fds = [scorer.fd(f, split) for f in draws]
        row[f"fd_{split}"] = statistics.mean(fds)
        row[f"fd_{split}_sd"] = statistics.stdev(fds) if len(fds) > 1 else 0.0
    print({**row, "wall_s": round(time.perf_counter() - t, 1)}, file=sys.stderr, flush=True)
    return row, draws


def sweep(scorer: Scorer, seeds: int, steps: list[int], samplers: list[str], settings: list[dict],
          reference_steps: int) -> tuple[list[dict], dict]:
    """Rows of FD per (sampler, steps), heun-churn once per churn setting; and the reference
    (ddpm at ``reference_steps``) with its seed-to-seed FD."""
    from genforge.diffusion import samplers as S
    from genforge.metrics.frechet import frechet_distance

    reference, draws = cell(scorer, seeds, "ddpm", "ddpm", reference_steps, "ddpm")
    if seeds > 1:
        reference["fd_seed0_seed1"] = frechet_distance(draws[0], draws[1])
    rows = []
    for sampler in samplers:
        variants = [(sampler, sampler, None)] if sampler != "heun-churn" else [
            (churn_label(c), "heun-churn-" + "-".join(f"{c[k]:g}" for k in CHURN_KEYS), c) for c in settings]
        for label, key, churn in variants:
            original = S.SAMPLERS[sampler]
            if churn is not None:  # the family looks samplers up in this dict at sampling time
                S.SAMPLERS[sampler] = partial(S.sample_heun_churn, **churn)
            try:
                rows.extend(cell(scorer, seeds, sampler, key, k, label)[0] for k in steps)
            finally:
                S.SAMPLERS[sampler] = original
    return rows, reference


def ratio_se(row: dict, ref: dict, split: str, seeds: int) -> float:
    """Standard error of FD(row) / FD(ref), each a mean over ``seeds`` draws (first-order
    propagation, draws independent)."""
    a, r = row[f"fd_{split}"], ref[f"fd_{split}"]
    rel = ((row[f"fd_{split}_sd"] / a) ** 2 + (ref[f"fd_{split}_sd"] / r) ** 2) ** 0.5
    return a / r * rel / seeds ** 0.5


def render(result: dict) -> str:
    ref, steps = result["reference"], result["steps"]
    noise = (f"; FD between its seed-0 and seed-1 draws: {ref['fd_seed0_seed1']:.2f} (the same sampler twice: "
             f"FD's finite-sample bias with {result['n']} images on both sides)") if "fd_seed0_seed1" in ref else ""
    lines = ["# Diffusion on 8x8 digits: FD against sampling steps", "",
             f"Run `{result['run']}` (step {result['run_step']}); {result['machine']['cpu']}, torch "
             f"{result['machine']['torch']}. Each cell: mean +- sd over {result['seeds']} draws (seeds 0..) of "
             f"{result['n']} samples, FD in genforge's digits feature space against the whole training split "
             f"({result['n_train']} images); in brackets the ratio to the reference, then FD against the "
             f"{result['n_test']}-image test split. Reference: ancestral DDPM at {ref['steps']} steps, FD "
             f"{ref['fd_train']:.2f} +- {ref['fd_train_sd']:.2f} (train), {ref['fd_test']:.2f} +- "
             f"{ref['fd_test_sd']:.2f} (test){noise}. Floor of the test column ({result['n']} training images "
             f"vs the test split): {result['floor_train_vs_test']:.2f}.", "",
             "| sampler | " + " | ".join(f"{k} steps" for k in steps) + " |", "| --- |" + " --- |" * len(steps)]
    by = {(r["sampler"], r["steps"]): r for r in result["rows"]}
    for label in dict.fromkeys(r["sampler"] for r in result["rows"]):
        cells = []
        for k in steps:
            r = by[label, k]
            cells.append(f"{r['fd_train']:.2f} +- {r['fd_train_sd']:.2f} ({r['fd_train'] / ref['fd_train']:.2f}x); "
                         f"test {r['fd_test']:.2f}; {r['nfe']} NFE")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    at20 = [r for r in result["rows"] if r["steps"] == 20]
    for split in ("train", "test") if at20 else ():
        best = min(at20, key=lambda r: r[f"fd_{split}"])
        ratio = best[f"fd_{split}"] / ref[f"fd_{split}"]
        lines += ["", f"Goal (20 steps within 10% of DDPM-{ref['steps']}), {split} reference: best at 20 steps is "
                      f"{best['sampler']}, FD {best[f'fd_{split}']:.2f} = {ratio:.2f}x +- {ratio_se(best, ref, split, result['seeds']):.2f} "
                      f"(standard error from the sd over draws): {'met' if ratio <= 1.1 else 'not met'}."]
    lines += ["", f"Figure: `{result['name']}.png`. Run trained by `genforge train diffusion-digits --run-dir "
                  f"{result['run']}` (the preset's recipe; `load_run`'s default checkpoint, the best by validation "
                  f"loss). Command: `{result['command']}`"]
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from genforge.atomic import atomic_write

    ref = result["reference"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, split in zip(axes, ("train", "test"), strict=True):
        for label in dict.fromkeys(r["sampler"] for r in result["rows"]):
            rows = [r for r in result["rows"] if r["sampler"] == label]
            ax.errorbar([r["steps"] for r in rows], [r[f"fd_{split}"] for r in rows],
                        yerr=[r[f"fd_{split}_sd"] for r in rows], marker="o", ms=3, capsize=2, label=label)
        y, sd = ref[f"fd_{split}"], ref[f"fd_{split}_sd"]
        ax.axhline(y, color="black", lw=1, label=f"ddpm {ref['steps']} steps")
        ax.axhspan(y - sd, y + sd, color="black", alpha=0.08)
        ax.axhline(1.1 * y, color="black", ls="--", lw=1, label="+10%")
        ax.set_xscale("log")
        ax.set_xticks(result["steps"], [str(k) for k in result["steps"]])
        ax.minorticks_off()
        ax.set_xlabel("sampling steps")
        ax.set_ylabel(f"FD vs {split} split")
        ax.set_title(f"FD against the {split} split ({result['n']} samples per draw)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="a trained diffusion-digits run folder")
    p.add_argument("--seeds", type=int, default=2, help="draws per cell (default 2; >= 2 gives the noise floor)")
    p.add_argument("--steps", type=ints, default=list(STEPS), help="step counts (default 10,20,50,100)")
    p.add_argument("--samplers", type=names, default=list(SAMPLERS),
                   help="samplers (default ddpm,ddim,heun,dpmpp-2m,dpmpp-2m-sde,heun-churn)")
    p.add_argument("--churn", type=churns, default=None,
                   help="heun-churn settings S_churn[:S_tmin:S_tmax:S_noise], comma-separated, one row each "
                        "(default: the sampler's own, Karras et al. table 5 ImageNet-64: 80:0.05:50:1.003)")
    p.add_argument("--reference-steps", type=int, default=1000, help="steps of the DDPM reference (default 1000)")
    p.add_argument("--samples", type=int, default=500, help="samples per draw (default 500)")
    p.add_argument("--results", type=Path, default=RESULTS, help="output folder (default benchmarks/results)")
    p.add_argument("--name", default="diffusion_steps", help="output file stem (default diffusion_steps)")
    args = p.parse_args()
    if args.seeds < 1 or args.reference_steps < 1 or args.samples < 2:
        p.error("--seeds and --reference-steps must be >= 1, --samples >= 2")
    if args.churn and "heun-churn" not in args.samplers:
        p.error("--churn sets heun-churn's rows; add heun-churn to --samplers")
    if not (args.run / "checkpoints").is_dir():
        p.error(f"{args.run} is not a run folder (no checkpoints/); train one: genforge train diffusion-digits")

    from genforge import GenforgeError
    from genforge.diffusion.samplers import CHURN_DEFAULTS
    from genforge.runs import load_run

    try:
        run = load_run(args.run)
        if run.config.family != "diffusion" or run.config.data.name != "digits":
            p.error(f"{args.run} is a {run.config.family} run on {run.config.data.name}; this benchmark "
                    "scores diffusion on digits")
        run.model.eval()
        scorer = Scorer(run, args.samples)
    except GenforgeError as e:
        p.error(str(e))
    rows, reference = sweep(scorer, args.seeds, args.steps, args.samplers, args.churn or [CHURN_DEFAULTS],
                            args.reference_steps)
    result = {"run": str(args.run), "run_step": run.step, "machine": machine(), "seeds": args.seeds,
              "n": args.samples, "n_train": len(scorer.refs["train"]), "n_test": len(scorer.refs["test"]),
              "floor_train_vs_test": scorer.floor_train_vs_test, "steps": args.steps, "reference": reference,
              "rows": rows, "name": args.name, "command": "python benchmarks/" + " ".join(
                  [Path(sys.argv[0]).name, *sys.argv[1:]]), "date": time.strftime("%Y-%m-%d")}
    write(args.name, result, render(result), folder=args.results)
    plot(result, args.results / f"{args.name}.png")


if __name__ == "__main__":
    main()
