"""FD against sampling steps for each sampler on a trained diffusion-digits run (issue #20).

The goal: a 20-step sampler within 10% of the FD of 1000-step ancestral DDPM (the reference,
Ho et al. 2020). Deterministic ODE samplers (ddim, heun, dpmpp-2m) stop improving near an FD
above DDPM-1000's; Karras et al. 2022 (sec. 4, algorithm 2) add "churn", fresh noise before each
Heun step, to correct the errors earlier steps left, which is ``heun-churn`` here. Its S_churn
is tuned per data set in their table 5, so ``--churn`` sweeps it (each value its own row).

Each cell is the mean (and standard deviation) of ``--seeds`` draws of as many samples as the
run's test split holds, scored in genforge's fixed digits feature space against the test
images, with the run's schedule and EMA weights; NFE is network evaluations per sample.

Usage: nice -n 19 python benchmarks/bench_diffusion_steps.py RUN_DIR [--seeds 5]
       [--steps 10,20,50,100,1000] [--samplers ddpm,ddim,heun,dpmpp-2m,heun-churn]
       [--churn 10,40,80] [--reference-steps 1000] [--samples N] [--results DIR]
RUN_DIR: a run of the ``diffusion-digits`` preset (``genforge train diffusion-digits``).
Smoke run: ``--seeds 1 --steps 2,3 --reference-steps 4 --samples 16 --results /tmp/x``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_diffusion_digits import scorer  # the same FD as the digits benchmark's sweep
from common import RESULTS, machine, write

STEPS = (10, 20, 50, 100, 1000)
SAMPLERS = ("ddpm", "ddim", "heun", "dpmpp-2m", "heun-churn")
SECOND_ORDER = {"heun", "heun-churn"}  # two evaluations per step, one on the last


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


def floats(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got '{text}'") from None
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"expected numbers >= 0, got '{text}'")
    return values


def names(text: str) -> list[str]:
    from genforge.diffusion.samplers import SAMPLERS as REGISTERED

    values = [v for v in text.split(",") if v]
    unknown = [v for v in values if v not in REGISTERED]
    if unknown or not values:
        raise argparse.ArgumentTypeError(f"unknown sampler(s) {', '.join(unknown) or '(none)'}; choose from "
                                         f"{', '.join(REGISTERED)}")
    return values


def cell(score, seeds: int, sampler: str, steps: int, label: str) -> dict:
    t = time.perf_counter()
    fds = [score(s, sampler=sampler, sampling_steps=steps)["fd"] for s in range(seeds)]
    row = {"sampler": label, "steps": steps, "nfe": nfe(sampler, steps), "fd": statistics.mean(fds),
           "fd_sd": statistics.stdev(fds) if len(fds) > 1 else 0.0, "wall_s": time.perf_counter() - t}
    print(row, file=sys.stderr, flush=True)
    return row


def sweep(run, seeds: int, steps: list[int], samplers: list[str], churns: list[float], samples: int | None,
          reference_steps: int) -> tuple[list[dict], dict, int]:
    """Rows of FD per (sampler, steps), heun-churn once per S_churn in ``churns``; and the
    reference cell (ddpm at ``reference_steps``)."""
    from genforge.diffusion import samplers as S

    score, _, n = scorer(run, samples)
    reference = cell(score, seeds, "ddpm", reference_steps, "ddpm")
    rows = []
    for sampler in samplers:
        settings = [(sampler, None)] if sampler != "heun-churn" else [
            (f"heun-churn (S_churn={c:g})", c) for c in churns]
        for label, churn in settings:
            original = S.SAMPLERS[sampler]
            if churn is not None:  # the family looks samplers up in this dict at sampling time
                S.SAMPLERS[sampler] = partial(S.sample_heun_churn, s_churn=churn)
            try:
                for k in steps:
                    if sampler == "ddpm" and k == reference_steps:
                        rows.append({**reference, "sampler": label})
                    else:
                        rows.append(cell(score, seeds, sampler, k, label))
            finally:
                S.SAMPLERS[sampler] = original
    return rows, reference, n


def render(result: dict) -> str:
    ref = result["reference"]
    steps = result["steps"]
    lines = ["# Diffusion on 8x8 digits: FD against sampling steps", "",
             f"Run `{result['run']}` (step {result['run_step']}); {result['machine']['cpu']}. Each cell: mean +- sd "
             f"of {result['seeds']} draws of {result['n']} samples against the test images, genforge's digits "
             f"feature space; in brackets the ratio to the reference, ancestral DDPM at {ref['steps']} steps "
             f"(FD {ref['fd']:.2f} +- {ref['fd_sd']:.2f}). heun-churn: Karras et al. 2022 algorithm 2 with "
             f"S_tmin {result['churn_defaults']['s_tmin']}, S_tmax {result['churn_defaults']['s_tmax']}, "
             f"S_noise {result['churn_defaults']['s_noise']}.", "",
             "| sampler | " + " | ".join(f"{k} steps" for k in steps) + " |", "| --- |" + " --- |" * len(steps)]
    by = {(r["sampler"], r["steps"]): r for r in result["rows"]}
    for label in dict.fromkeys(r["sampler"] for r in result["rows"]):
        cells = []
        for k in steps:
            r = by[label, k]
            cells.append(f"{r['fd']:.2f} +- {r['fd_sd']:.2f} ({r['fd'] / ref['fd']:.2f}x, {r['nfe']} NFE)")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    at20 = [r for r in result["rows"] if r["steps"] == 20]
    if at20:
        best = min(at20, key=lambda r: r["fd"])
        ok = "met" if best["fd"] <= 1.1 * ref["fd"] else "not met"
        lines += ["", f"Goal (20 steps within 10% of DDPM-{ref['steps']}): best at 20 steps is {best['sampler']}, "
                      f"FD {best['fd']:.2f} = {best['fd'] / ref['fd']:.2f}x the reference: {ok}."]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, help="a trained diffusion-digits run folder")
    p.add_argument("--seeds", type=int, default=5, help="draws per cell (default 5)")
    p.add_argument("--steps", type=ints, default=list(STEPS), help="step counts (default 10,20,50,100,1000)")
    p.add_argument("--samplers", type=names, default=list(SAMPLERS),
                   help="samplers (default ddpm,ddim,heun,dpmpp-2m,heun-churn)")
    p.add_argument("--churn", type=floats, default=None,
                   help="S_churn values for heun-churn, one row each (default: the sampler's own, 80)")
    p.add_argument("--reference-steps", type=int, default=1000, help="steps of the DDPM reference (default 1000)")
    p.add_argument("--samples", type=int, default=None, help="samples per draw (default: the test split's size)")
    p.add_argument("--results", type=Path, default=RESULTS, help="output folder (default benchmarks/results)")
    p.add_argument("--name", default="diffusion_steps", help="output file stem (default diffusion_steps)")
    args = p.parse_args()
    if args.seeds < 1 or args.reference_steps < 1 or (args.samples is not None and args.samples < 2):
        p.error("--seeds and --reference-steps must be >= 1, --samples >= 2")
    if not (args.run / "checkpoints").is_dir():
        p.error(f"{args.run} is not a run folder (no checkpoints/); train one: genforge train diffusion-digits")

    from genforge.diffusion.samplers import CHURN_DEFAULTS
    from genforge.runs import load_run

    run = load_run(args.run)
    run.model.eval()
    churns = args.churn or [CHURN_DEFAULTS["s_churn"]]
    rows, reference, n = sweep(run, args.seeds, args.steps, args.samplers, churns, args.samples,
                               args.reference_steps)
    result = {"run": str(args.run), "run_step": run.step, "machine": machine(), "seeds": args.seeds, "n": n,
              "steps": args.steps, "reference": reference, "rows": rows, "churn_defaults": CHURN_DEFAULTS,
              "command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d")}
    write(args.name, result, render(result), folder=args.results)


if __name__ == "__main__":
    main()
